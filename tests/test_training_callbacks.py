"""Training callbacks: the best model survives a resume."""
import math

import pytest

pytest.importorskip("keras")

from regnet.training_callbacks import best_so_far  # noqa: E402


def test_best_so_far_reads_the_lowest_validation_error_of_earlier_segments(tmp_path):
    history = tmp_path / "history.csv"
    assert best_so_far(history) == math.inf  # a fresh run
    history.write_text("epoch,epe,loss,val_epe\n0,2.0,1.0,1.75\n1,1.9,0.9,\n2,1.5,0.8,1.25\n3,1.4,0.7,1.5\n"
                       "4,1.3,0.6,nan\n")
    assert best_so_far(history) == 1.25


def test_last_validation_is_the_last_row_with_a_validation(tmp_path):
    from regnet.train import last_validation

    history = tmp_path / "history.csv"
    assert last_validation(history) == {}
    history.write_text("epoch,epe,val_epe,val_zero_epe\n0,2.0,1.75,2.5\n1,1.9,,\n")
    assert last_validation(history) == {"epoch": 0.0, "epe": 2.0, "val_epe": 1.75, "val_zero_epe": 2.5}
