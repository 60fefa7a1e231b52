"""Evaluation metrics: ECE by hand, OOD grouping into sets, shifts, seen and held-out families."""

import numpy as np
import pytest

from trainer.evaluate import _ood_set, expected_calibration_error, score


def test_ece_matches_hand_computation():
    # Confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct) with 2 bins: (0, .5], (.5, 1].
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1, 0])
    ece = expected_calibration_error(np.log(probs), labels, bins=2)
    # One populated bin: accuracy 2/3, mean confidence 0.8.
    assert ece == pytest.approx(abs(2 / 3 - 0.8))


def test_ece_is_zero_for_calibrated_certain_predictions():
    logits = np.array([[50.0, 0.0], [0.0, 50.0]])
    assert expected_calibration_error(logits, np.array([0, 1])) == pytest.approx(0.0, abs=1e-9)


def test_ood_set_names():
    assert _ood_set({"corruption": "fog", "severity": 3, "seen": False}, "x") == (
        "fog/s3",
        "fog",
        "held_out",
    )
    assert _ood_set({}, "fog/3") == ("fog/s3", "fog", "natural")
    assert _ood_set({}, "hospital_2") == ("domain:hospital_2", "domain:hospital_2", "natural")


def test_score_groups_shifts_and_families():
    def logits_for(predictions):
        out = np.zeros((len(predictions), 3))
        out[np.arange(len(predictions)), predictions] = 5.0
        return out

    outputs = {
        "id_test": {"logits": logits_for([0, 1, 2, 0]), "labels": np.array([0, 1, 2, 1])},
        "ood_test": {
            "logits": logits_for([0, 0, 1, 1, 2, 2]),
            "labels": np.array([0, 1, 1, 1, 2, 0]),
            "params": [
                {"corruption": "noise", "severity": 1, "seen": True},
                {"corruption": "noise", "severity": 1, "seen": True},
                {"corruption": "noise", "severity": 5, "seen": True},
                {"corruption": "noise", "severity": 5, "seen": True},
                {"corruption": "fog", "severity": 1, "seen": False},
                {"corruption": "fog", "severity": 1, "seen": False},
            ],
            "domains": ["d"] * 6,
        },
    }
    result = score(outputs, bins=10)
    assert result["id_accuracy"] == 0.75
    assert result["ood_per_set"] == {"fog/s1": 0.5, "noise/s1": 0.5, "noise/s5": 1.0}
    assert result["ood_per_shift"] == {"fog": 0.5, "noise": 0.75}
    assert result["ood_average"] == pytest.approx(0.625)
    assert result["ood_worst"] == 0.5
    assert result["ood_seen_average"] == 0.75
    assert result["ood_held_out_average"] == 0.5
    assert result["id_ood_gap"] == pytest.approx(0.125)
