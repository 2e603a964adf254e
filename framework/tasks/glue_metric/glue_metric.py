"""GLUE metrics as an ``evaluate`` module the project ships, so it loads offline from a folder.

Load it with ``evaluate.load("<this folder>", config_name="rte")``. Configs are the six tasks of the
paper's Table 2; each reports its Table 2 metric (accuracy; Matthews correlation for CoLA; Pearson for
STS-B) plus the usual extras (F1 for MRPC, Spearman for STS-B). Values are fractions, not percent.
evaluate's import scanner reads this file line by line: keep one import per line.
"""
import datasets
import evaluate
import numpy
import scipy.stats
import sklearn.metrics

_DESCRIPTION = "GLUE task metrics (accuracy, F1, Matthews corr., Pearson/Spearman) for the C3A project."

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids (classification) or scores (stsb).
    references: gold class ids (classification) or scores (stsb).
Returns:
    sst2, qnli, rte: accuracy. mrpc: accuracy, f1 (positive class 1). cola: matthews_correlation.
    stsb: pearson, spearman.
"""

CLASSIFICATION_CONFIGS = ("sst2", "mrpc", "cola", "qnli", "rte")
REGRESSION_CONFIGS = ("stsb",)
VALID_CONFIGS = CLASSIFICATION_CONFIGS + REGRESSION_CONFIGS


def glue_scores(config_name, predictions, references):
    """The metric values for one task; plain function so it is usable without ``evaluate``."""
    predictions = numpy.asarray(predictions)
    references = numpy.asarray(references)
    if config_name == "stsb":
        return {
            "pearson": float(scipy.stats.pearsonr(predictions, references)[0]),
            "spearman": float(scipy.stats.spearmanr(predictions, references)[0]),
        }
    if config_name == "cola":
        return {"matthews_correlation": float(sklearn.metrics.matthews_corrcoef(references, predictions))}
    scores = {"accuracy": float(sklearn.metrics.accuracy_score(references, predictions))}
    if config_name == "mrpc":
        scores["f1"] = float(sklearn.metrics.f1_score(references, predictions))
    return scores


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    def _info(self):
        if self.config_name not in VALID_CONFIGS:
            raise KeyError(
                f"unknown GLUE metric config {self.config_name!r}; valid choices: {list(VALID_CONFIGS)}"
            )
        value_type = "float32" if self.config_name in REGRESSION_CONFIGS else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value(value_type), "references": datasets.Value(value_type)}
            ),
        )

    def _compute(self, predictions, references):
        return glue_scores(self.config_name, predictions, references)
