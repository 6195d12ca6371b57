"""`etad diagnose` and `etad eval` against DETAD's code and the official ActivityNet evaluator on
real ground truth with tied scores (four decimals, as many submissions write them; cases built by
tests/helpers.write_tied_cases from ../shared/data). The reference numbers were made outside the
repo by `benchmarks/official.py ties` (its docstring says how) and are kept in
tests/files/official_ties.json. Where scores tie, the order decides the AP: DETAD ranks with pandas
in two places and as the official code elsewhere, and judges the predictions of a video without
ground truth against the video before it; etad must give its numbers exactly."""

from __future__ import annotations

import json

import pytest

from stages import diagnose, evaluate
from tests.helpers import FILES, SHARED_DATA, largest_difference, write_tied_cases

pytestmark = pytest.mark.slow
KEPT = FILES / "official_ties.json"


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    if not (SHARED_DATA / "anet").is_dir() or not (SHARED_DATA / "thumos").is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (the real ground truth)")
    return write_tied_cases(SHARED_DATA, tmp_path_factory.mktemp("ties"))


@pytest.mark.parametrize("dataset", ["anet", "thumos"])
def test_diagnose_gives_detads_numbers_on_tied_scores(cases, dataset, tmp_path):
    truth, predictions, subset = cases[dataset]
    scores = [d["score"] for v in json.loads(predictions.read_text())["results"].values() for d in v]
    assert len(scores) - len(set(scores)) > 1000  # the case ties, many times
    ours = diagnose.run(truth, predictions, dataset=dataset, subset=subset, out=tmp_path)
    theirs = json.loads(KEPT.read_text())[f"detad_{dataset}"]
    assert largest_difference(theirs, ours) < 1e-12


def test_eval_gives_the_official_evaluators_numbers_on_tied_scores(cases):
    truth, predictions, subset = cases["anet"]
    report = evaluate.evaluate(predictions, truth, dataset="anet", subset=subset)
    theirs = json.loads(KEPT.read_text())["official_anet"]
    assert largest_difference(theirs, {"mAP": report.values, "average_mAP": report.average}) < 1e-12
