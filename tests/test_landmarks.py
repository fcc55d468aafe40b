"""Landmark formats -> physical mm, with hand computations and SimpleITK as the references."""
import numpy as np
import pytest

from regnet import RegNetError
from regnet.geometry import Geometry
from regnet.landmarks import read_landmarks, write_landmarks

POINTS = np.array([[10.5, -20.25, 33.0], [0.0, 1.0, -2.5], [-101.125, 7.75, 12.0]])


@pytest.mark.parametrize("name", ["p.csv", "p.fcsv", "p.mrk.json", "p.mps", "p.txt"])
def test_round_trip_in_mm(tmp_path, name):
    path = write_landmarks(POINTS, tmp_path / name)
    np.testing.assert_allclose(read_landmarks(path), POINTS, atol=1e-12)


def test_index_formats_go_through_the_direction_matrix(tmp_path, rotated_image):
    g = Geometry.of(rotated_image)
    idx = np.array([[1.0, 2.0, 3.0], [4.5, 0.0, 7.25]])
    expected = [rotated_image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx]
    (tmp_path / "i.txt").write_text("index\n2\n1 2 3\n4.5 0 7.25\n")
    np.testing.assert_allclose(read_landmarks(tmp_path / "i.txt", g), expected, atol=1e-9)
    written = write_landmarks(expected, tmp_path / "o.txt", g, fmt="elastix-index")
    np.testing.assert_allclose(np.loadtxt(written, skiprows=2), idx, atol=1e-9)
    with pytest.raises(RegNetError, match="geometry"):
        read_landmarks(tmp_path / "i.txt")


def test_dirlab_one_based_and_z_flip(tmp_path):
    g = Geometry((256, 256, 94), (0.97, 0.97, 2.5), (0.0, 0.0, 0.0))
    (tmp_path / "c.txt").write_text("1\t1\t1\r\n11\t21\t94\r\n")
    plain = read_landmarks(tmp_path / "c.txt", g)
    np.testing.assert_allclose(plain, [[0, 0, 0], [10 * 0.97, 20 * 0.97, 93 * 2.5]])
    flipped = read_landmarks(tmp_path / "c.txt", g, flip_z=True)
    np.testing.assert_allclose(flipped[:, 2], [93 * 2.5, 0.0])  # z index n_z - z
    back = write_landmarks(flipped, tmp_path / "w.txt", g, fmt="dirlab", flip_z=True)
    np.testing.assert_allclose(np.loadtxt(back), [[1, 1, 1], [11, 21, 94]], atol=1e-9)


def test_slicer_ras_is_converted_to_lps(tmp_path):
    (tmp_path / "r.fcsv").write_text(
        "# Markups fiducial file version = 4.10\n# CoordinateSystem = 0\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "vtkMRMLMarkupsFiducialNode_0,1.5,-2,3,0,0,0,1,1,1,0,F-1,,\n")
    np.testing.assert_allclose(read_landmarks(tmp_path / "r.fcsv"), [[-1.5, 2.0, 3.0]])
    (tmp_path / "r.mrk.json").write_text(
        '{"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", '
        '"controlPoints": [{"id": "1", "position": [4.0, 5.0, -6.0]}]}]}')
    np.testing.assert_allclose(read_landmarks(tmp_path / "r.mrk.json"), [[-4.0, -5.0, -6.0]])


def test_mitk_point_set_with_geometry(tmp_path):
    (tmp_path / "s.mps").write_text("""<?xml version="1.0" encoding="UTF-8"?>
<point_set_file><file_version>0.1</file_version><point_set><time_series>
<time_series_id>0</time_series_id>
<Geometry3D ImageGeometry="false" FrameOfReferenceID="0">
<IndexToWorld type="Matrix3x3" m_0_0="0" m_0_1="-1" m_0_2="0" m_1_0="1" m_1_1="0" m_1_2="0"
 m_2_0="0" m_2_1="0" m_2_2="2"/>
<Offset type="Vector3D" x="10" y="20" z="30"/></Geometry3D>
<point><id>0</id><specification>0</specification><x>1</x><y>2</y><z>3</z></point>
<point><id>1</id><specification>0</specification><x>0</x><y>0</y><z>0</z></point>
</time_series></point_set></point_set_file>""")
    # world = M p + offset, by hand: (-2+10, 1+20, 6+30) and (10, 20, 30)
    np.testing.assert_allclose(read_landmarks(tmp_path / "s.mps"), [[8, 21, 36], [10, 20, 30]])


def test_transformix_output_points(tmp_path):
    (tmp_path / "outputpoints.txt").write_text(
        "Point\t0\t; InputIndex = [ 1 2 3 ]\t; InputPoint = [ 1.0 2.0 3.0 ]\t; OutputIndexFixed = [ 1 2 3 ]\t"
        "; OutputPoint = [ 1.5 2.5 -3.5 ]\t; Deformation = [ 0.5 0.5 -6.5 ]\n")
    np.testing.assert_allclose(read_landmarks(tmp_path / "outputpoints.txt"), [[1.5, 2.5, -3.5]])


def test_bad_landmark_files(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(RegNetError, match="x, y, z"):
        read_landmarks(tmp_path / "bad.csv")
    with pytest.raises(RegNetError, match="no such landmark file"):
        read_landmarks(tmp_path / "none.csv")


# ------------------------------------------------------------------ malformed files (issue 15 item 3)
G = Geometry((20, 30, 10), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))


def test_two_column_file_is_rejected_naming_the_line(tmp_path):
    (tmp_path / "two.txt").write_text("1 2\n3 4\n5 6\n")  # flattened and regrouped in threes, it read as 2 points
    with pytest.raises(RegNetError, match=r"two\.txt: .*line 1: 2 values, expected 3"):
        read_landmarks(tmp_path / "two.txt", G)


def test_ragged_row_is_rejected_naming_its_line(tmp_path):
    (tmp_path / "r.txt").write_text("1 2 3\n\n4 5 6\n7 8\n")
    with pytest.raises(RegNetError, match=r"r\.txt: .*line 4: 2 values"):
        read_landmarks(tmp_path / "r.txt", G)
    (tmp_path / "e.txt").write_text("point\n2\n1 2 3\n4 5\n")
    with pytest.raises(RegNetError, match=r"e\.txt: .*line 4: 2 values"):
        read_landmarks(tmp_path / "e.txt")


def test_id_x_y_z_is_read_as_x_y_z_or_rejected(tmp_path):
    (tmp_path / "id.txt").write_text("1 2 3 4\n2 5 6 7\n")  # counter, then 1-based x y z
    np.testing.assert_allclose(read_landmarks(tmp_path / "id.txt", G),
                               [[1.0, 2 * 2.0, 3 * 3.0], [4.0, 5 * 2.0, 6 * 3.0]])  # (i - 1) * spacing
    (tmp_path / "four.txt").write_text("7 2 3 4\n9 5 6 7\n")  # four columns, not a counter
    with pytest.raises(RegNetError, match=r"four\.txt: .*line 1: four columns.*not 'id x y z'"):
        read_landmarks(tmp_path / "four.txt", G)


def test_indices_outside_the_image_are_rejected(tmp_path):
    (tmp_path / "far.txt").write_text("1 1 1\n5 5 11\n")  # z = 11 of 10 slices (1-based)
    with pytest.raises(RegNetError, match=r"far\.txt: .*line 2: voxel index \[5\.0, 5\.0, 11\.0\] lies outside "
                                          r"the image of 20x30x10"):
        read_landmarks(tmp_path / "far.txt", G)
    np.testing.assert_allclose(read_landmarks(tmp_path / "far.txt", Geometry((20, 30, 11), (1, 1, 1), (0, 0, 0)))[1],
                               [4, 4, 10])
    (tmp_path / "i.txt").write_text("index\n1\n-3 0 0\n")
    with pytest.raises(RegNetError, match=r"i\.txt: .*line 3: voxel index \[-3\.0, 0\.0, 0\.0\] lies outside"):
        read_landmarks(tmp_path / "i.txt", G)


def test_fcsv_mps_and_csv_rows_missing_a_coordinate_name_file_and_line(tmp_path):
    (tmp_path / "m.fcsv").write_text("# CoordinateSystem = LPS\n# columns = id,x,y,z\n1,1,2,3\n2,4,5\n")
    with pytest.raises(RegNetError, match=r"m\.fcsv: not a valid fcsv landmark file \(line 4: coordinate z is "
                                          r"missing\)"):
        read_landmarks(tmp_path / "m.fcsv")
    (tmp_path / "m.mps").write_text(
        "<point_set_file><point_set><time_series><time_series_id>0</time_series_id>\n"
        "<point><id>0</id><x>1</x><y>2</y><z>3</z></point>\n"
        "<point><id>1</id><x>1</x><y>2</y></point>\n"
        "</time_series></point_set></point_set_file>\n")
    with pytest.raises(RegNetError, match=r"m\.mps: not a valid mps landmark file \(point 1 \(id 1, line 3\): "
                                          r"coordinate z is missing\)"):
        read_landmarks(tmp_path / "m.mps")
    (tmp_path / "m.csv").write_text("label,x,y,z\n1,1,2,3\n2,4,x5,6\n")
    with pytest.raises(RegNetError, match=r"m\.csv: .*line 3: coordinate y = 'x5' is not a number"):
        read_landmarks(tmp_path / "m.csv")


def test_write_landmarks_rejects_points_that_are_not_n_by_3(tmp_path):
    with pytest.raises(RegNetError, match=r"must be an \(N, 3\) array .* got shape \(3, 2\)"):
        write_landmarks(np.zeros((3, 2)), tmp_path / "p.csv")
    with pytest.raises(RegNetError, match=r"got shape \(6,\)"):
        write_landmarks(np.zeros(6), tmp_path / "p.txt")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.txt").exists()
