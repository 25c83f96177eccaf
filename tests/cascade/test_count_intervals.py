"""A differential count with its uncertainty (bench.cascade.tables, bench.cascade.scoring): exact
binomial intervals of each share, and per-field agreement with the truth (Bland-Altman)."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy.stats import binomtest

from bench.cascade import scoring
from bench.cascade.tables import ALL_FIELDS, count_table


def test_each_share_of_the_differential_has_its_exact_interval():
    # One field: 3 neutrophils and 1 lymphocyte typed, one box the classifier did not type.
    cells = pd.DataFrame({"field": ["f"] * 5, "detector_label": ["wbc"] * 5,
                          "classified": [True, True, True, True, False],
                          "cell_type": ["neutrophil", "neutrophil", "neutrophil", "lymphocyte", ""]})
    table = count_table(cells, ["f"], ["wbc"], ["lymphocyte", "neutrophil"])
    row = table[(table["field"] == ALL_FIELDS) & (table["label"] == "neutrophil")].iloc[0]
    ci = binomtest(3, 4).proportion_ci(confidence_level=0.95, method="exact")
    assert row["percent"] == 75.0
    assert (row["percent_low"], row["percent_high"]) == (round(100 * ci.low, 2), round(100 * ci.high, 2))


def test_per_field_counts_agree_with_the_truth_by_bland_altman():
    tally = scoring._Tally({"lymphocyte": 0, "neutrophil": 1}, {"lymphocyte", "neutrophil"})
    # Field A: truth 3 neutrophils + 1 lymphocyte, found 2 + 2; field B: truth 2 + 2, found 2 + 2.
    tally.add_field(["neutrophil"] * 2 + ["lymphocyte"] * 2, ["neutrophil"] * 3 + ["lymphocyte"], [])
    tally.add_field(["neutrophil"] * 2 + ["lymphocyte"] * 2, ["neutrophil"] * 2 + ["lymphocyte"] * 2, [])
    a = tally.agreement(["lymphocyte", "neutrophil"])["neutrophil"]
    # Differences -1 and 0: mean -0.5, sd 0.7071 (ddof 1), limits -0.5 -+ 1.96 x 0.7071.
    assert a["mean_difference"] == -0.5
    assert a["limits_of_agreement"] == pytest.approx([-0.5 - 1.96 * 0.5 ** 0.5, -0.5 + 1.96 * 0.5 ** 0.5])
    # Predicted share 2/4 in both fields, inside the exact intervals of 3/4 and 2/4.
    assert a["share_inside_true_interval"] == 1.0 and a["n_fields_with_shares"] == 2
