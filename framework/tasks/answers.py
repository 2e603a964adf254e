"""Answer extraction and scoring for generated text (math, commonsense, instruction-style GLUE).

The rules follow the protocols the paper's LLaMA tables use (docs/paper.md §4):

- GSM8K (MetaMath's rule): the first number after the last "The answer is" in the generation; no such
  phrase means no answer (scored wrong). Gold: the number after ``####`` in a GSM8K solution.
- MATH: the final answer — after the last "The answer is", else the last ``\\boxed{...}`` — normalised
  (LaTeX spacing and sizing commands, ``$``, units in ``\\text{}``, degrees/percent signs,
  ``\\dfrac``/``\\tfrac``, ``\\frac12``, ``a/b``, ``x = ...``) and compared as strings, or as numbers
  when both sides parse as numbers.
- Commonsense (LLM-Adapters' rule): the first answer keyword of the example's family (true/false,
  solution1-2, answer1-5, option1-2, ending1-4, or a task's own words) in the generation. We match
  case-insensitively on word boundaries, so "True." and "answer2," count (a stated choice).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Optional, Sequence

ANSWER_PHRASE = re.compile(r"the answer is\s*:?", re.IGNORECASE)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
#: the commonsense answer families (LLM-Adapters' Commonsense170K and its eight evaluation sets)
KEYWORD_FAMILIES: dict[str, tuple[str, ...]] = {
    "true": ("true", "false"),
    "solution": ("solution1", "solution2"),
    "answer": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "option": ("option1", "option2"),
    "ending": ("ending1", "ending2", "ending3", "ending4"),
}


# ----------------------------------------------------------------------------------- numbers (GSM8K)
def parse_number(text: str) -> Optional[float]:
    """A number written like ``1,234``, ``-3.5``, ``$18`` or ``.5``; None if ``text`` holds none."""
    match = NUMBER.search(text.replace("$", ""))
    if match is None:
        return None
    try:
        return float(match.group(0).replace(",", ""))
    except ValueError:  # "1,,2" and the like
        return None


def gsm8k_gold(solution: str) -> str:
    """The gold answer of a GSM8K solution: what follows ``####``."""
    if "####" not in solution:
        raise ValueError(f"not a GSM8K solution (no '####' line): {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def after_answer_phrase(generation: str) -> Optional[str]:
    """Text after the last "The answer is" (MetaMath's answer marker), or None when it is absent."""
    parts = ANSWER_PHRASE.split(generation)
    return parts[-1].strip() if len(parts) > 1 else None


def extract_gsm8k(generation: str) -> Optional[float]:
    """The predicted number: the first number after the last "The answer is"."""
    tail = after_answer_phrase(generation)
    return None if tail is None else parse_number(tail)


def numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def gsm8k_correct(generation: str, gold: str) -> bool:
    predicted, expected = extract_gsm8k(generation), parse_number(gold)
    if expected is None:
        raise ValueError(f"GSM8K gold answer {gold!r} is not a number")
    return predicted is not None and numbers_equal(predicted, expected)


# ----------------------------------------------------------------------------------------- MATH
def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    brace = rest.find("{")
    if brace < 0:  # "\boxed 5"
        tail = rest[len("\\boxed"):].strip()
        return tail.split("$")[0].strip() or None
    depth = 0
    for position in range(brace, len(rest)):
        if rest[position] == "{":
            depth += 1
        elif rest[position] == "}":
            depth -= 1
            if depth == 0:
                return rest[brace + 1:position]
    return None  # unbalanced: a truncated generation


def extract_math(generation: str) -> Optional[str]:
    """The final answer: after the last "The answer is", else the last boxed expression."""
    tail = after_answer_phrase(generation)
    if tail is not None:
        boxed = last_boxed(tail)
        answer = boxed if boxed is not None else tail.split("\n")[0]
        return answer.strip().rstrip(".").strip() or None
    return last_boxed(generation)


def _braced_fractions(text: str) -> str:
    r"""``\frac12`` → ``\frac{1}{2}``, ``\frac1{22}`` → ``\frac{1}{22}``; ``\sqrt3`` → ``\sqrt{3}``."""
    text = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\s*(\w)\s*\{", r"\\frac{\1}{", text)
    text = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\w)", r"\\frac{\1}{\2}", text)
    return re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", text)


def normalize_math(answer: str) -> str:
    """A canonical string for a MATH answer, so that equal answers written differently compare equal."""
    text = answer.strip().replace("\n", "")
    text = text.strip("$").strip()
    text = re.sub(r"\\text\{\s*\}", "", text)
    # units at the end, e.g. "10\text{ cm}" or "5 \mbox{ inches}"
    text = re.sub(r"\s*\\(?:text|mbox)\{\s*[A-Za-z][A-Za-z\s]*\}\s*$", "", text)
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", text)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle"):
        text = text.replace(token, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°", "", text)
    text = text.replace("\\%", "").replace("%", "").replace("\\$", "")
    # "x = 5" / "k=3": the value, when the left side is a short name
    match = re.fullmatch(r"\s*[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(.+)", text)
    if match:
        text = match.group(1)
    text = _braced_fractions(text)
    text = re.sub(r"\s+", "", text)
    if re.fullmatch(r"-?\d+/\d+", text):  # "3/4" → "\frac{3}{4}"
        numerator, denominator = text.split("/")
        sign = "-" if numerator.startswith("-") else ""
        text = f"{sign}\\frac{{{numerator.lstrip('-')}}}{{{denominator}}}"
    text = re.sub(r"(?<![\d])\.(\d)", r"0.\1", text)  # ".5" → "0.5"
    text = text.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")  # thousands separators, not a list "1,2"
    return text


def _as_number(text: str) -> Optional[float]:
    """The value of a plain number or a simple ``\\frac{a}{b}``; None for anything else."""
    if re.fullmatch(r"-?\d+(?:\.\d+)?", text):
        return float(text)
    match = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(\d+(?:\.\d+)?)\}", text)
    if match and float(match.group(3)) != 0:
        value = float(match.group(2)) / float(match.group(3))
        return -value if match.group(1) else value
    return None


def math_equal(predicted: Optional[str], gold: str) -> bool:
    """Normalised string equality, or numeric equality when both sides are numbers/simple fractions."""
    if predicted is None:
        return False
    a, b = normalize_math(predicted), normalize_math(gold)
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and numbers_equal(x, y)


def math_gold(solution: str) -> str:
    """The gold answer of a MATH solution: its last boxed expression."""
    boxed = last_boxed(solution)
    if boxed is None:
        raise ValueError(f"not a MATH solution (no \\boxed{{...}}): {solution[-80:]!r}")
    return boxed


def math_correct(generation: str, gold: str) -> bool:
    return math_equal(extract_math(generation), gold)


# ----------------------------------------------------------------------------------- keywords
def keyword_family(answer: str) -> tuple[str, ...]:
    """The keyword set an answer belongs to: "answer3" → answer1..answer5, "false" → (true, false)."""
    word = answer.strip().lower()
    family = "true" if word in ("true", "false") else re.sub(r"\d+$", "", word)
    if family not in KEYWORD_FAMILIES or word not in KEYWORD_FAMILIES[family]:
        raise ValueError(f"answer {answer!r} belongs to no answer-keyword family; known families: "
                         f"{ {k: list(v) for k, v in KEYWORD_FAMILIES.items()} }")
    return KEYWORD_FAMILIES[family]


def first_keyword(generation: str, keywords: Iterable[str]) -> Optional[str]:
    """The first of ``keywords`` to appear in the generation as a whole word (case-insensitive)."""
    words = sorted({k.lower() for k in keywords}, key=len, reverse=True)
    if not words:
        raise ValueError("first_keyword needs at least one keyword")
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, words)) + r")(?![A-Za-z0-9_])",
                         re.IGNORECASE)
    match = pattern.search(generation)
    return None if match is None else match.group(1).lower()


def keyword_correct(generation: str, gold: str, keywords: Sequence[str]) -> bool:
    if gold.lower() not in {k.lower() for k in keywords}:
        raise ValueError(f"gold answer {gold!r} is not one of the keywords {list(keywords)}")
    return first_keyword(generation, keywords) == gold.lower()


def accuracy(flags: Sequence[bool]) -> float:
    """Fraction correct; an empty list is an error (a metric of nothing is not 0)."""
    if len(flags) == 0:
        raise ValueError("accuracy of an empty set of predictions")
    return sum(bool(f) for f in flags) / len(flags)
