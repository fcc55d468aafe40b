"""decimation4 ("multi-view", RegNet Fig. 4): 105^3 x 2 -> 21^3 x 3.

The input is viewed at three resolutions before any learning: R1 = centre crop, R2 = crop then
diamond-kernel decimation by 2, R4 = decimation by 4 of the whole patch. Takes 105 + 4k voxels
(-> 21 + 4k).
"""

from regnet.networks.layers import Decimation, centre_crop, conv_block
from regnet.networks.multiscale import merge_head, r1_path, r2_path, r4_path
from regnet.networks.spec import NetworkOptions, NetworkSpec


def graph(x, o: NetworkOptions):
    c, bn = o.channels, o.batch_norm
    images_r4 = Decimation(15, 4, name="decimate_R4")(x)
    images_r2 = Decimation(7, 2, name="decimate_R2")(centre_crop(x, 19, "crop_input_R2"))
    images_r1 = centre_crop(x, 34, "crop_input_R1")
    conv1_r1 = conv_block(images_r1, c(16), "conv1_R1", batch_norm=bn, padding="same")
    r1 = r1_path(conv1_r1, o)
    r2, conv5_r2 = r2_path(conv_block(images_r2, c(20), "conv1_R2", batch_norm=bn, padding="same"), conv1_r1, 5, o)
    r4 = r4_path(conv_block(images_r4, c(30), "conv1_R4", batch_norm=bn), conv5_r2, conv1_r1, 5, o)
    return merge_head(r1, r2, r4, o)


SPEC = NetworkSpec(
    name="decimation4", graph=graph, R=52, Ry=10, resize_unit=4, min_input=85,
    paper_parameters=1_201_353,
    description="multi-view (Fig. 4): 105^3 x 2 -> 21^3 x 3, fixed diamond-kernel decimation by 2 and 4")
