"""decimation4 ("multi-view", RegNet Fig. 4): 105^3 x 2 -> 21^3 x 3.

The input is viewed at three resolutions before any learning: R1 = centre crop, R2 = crop then
diamond-kernel decimation by 2, R4 = decimation by 4 of the whole patch. Takes 105 + 4k voxels
(-> 21 + 4k).
"""
from keras import layers

from regnet.networks.layers import Decimation, TrilinearUpsample, centre_crop, conv_block
from regnet.networks.spec import NetworkOptions, NetworkSpec


def graph(x, o: NetworkOptions):
    c, bn = o.channels, o.batch_norm
    images_r4 = Decimation(15, 4, name="decimate_R4")(x)
    images_r2 = Decimation(7, 2, name="decimate_R2")(centre_crop(x, 19, "crop_input_R2"))
    images_r1 = centre_crop(x, 34, "crop_input_R1")

    conv1_r1 = conv_block(images_r1, c(16), "conv1_R1", batch_norm=bn, padding="same")
    h = conv1_r1
    for i, filters in enumerate((20, 24, 28, 32, 32, 32), start=2):
        h = conv_block(h, c(filters), f"conv{i}_R1", batch_norm=bn)
    r1 = h

    h = conv_block(images_r2, c(20), "conv1_R2", batch_norm=bn, padding="same")
    h = conv_block(h, c(30), "conv2_R2", batch_norm=bn)
    for i, filters in enumerate((32, 34, 36, 38), start=3):
        h = conv_block(h, c(filters), f"conv{i}_R2", batch_norm=bn, dilation=2)
        if i == 5:
            conv5_r2 = h
    h = TrilinearUpsample(name="up_R2")(h)
    h = layers.Concatenate(name="concat_R2")([h, centre_crop(conv1_r1, 5, "crop_R2_skip")])
    r2 = conv_block(h, c(40), "conv8_R2", batch_norm=bn)

    h = conv_block(images_r4, c(30), "conv1_R4", batch_norm=bn)
    h = conv_block(h, c(40), "conv2_R4", batch_norm=bn)
    for i, filters in enumerate((42, 44, 46), start=3):
        h = conv_block(h, c(filters), f"conv{i}_R4", batch_norm=bn, dilation=2)
    h = TrilinearUpsample(name="up1_R4")(h)
    h = layers.Concatenate(name="concat1_R4")([h, centre_crop(conv5_r2, 1, "crop_R4_skip1")])
    h = conv_block(h, c(46), "conv7_R4", batch_norm=bn)
    h = TrilinearUpsample(name="up2_R4")(h)
    h = layers.Concatenate(name="concat2_R4")([h, centre_crop(conv1_r1, 5, "crop_R4_skip2")])
    r4 = conv_block(h, c(40), "conv9_R4", batch_norm=bn)

    h = layers.Concatenate(name="merge")([r1, r2, r4])
    h = conv_block(h, c(120), "conv1_FC", batch_norm=bn, activation="elu")
    return conv_block(h, c(50), "conv2_FC", batch_norm=bn, activation="elu")


SPEC = NetworkSpec(
    name="decimation4", graph=graph, R=52, Ry=10, resize_unit=4, min_input=85,
    paper_parameters=1_201_353,
    description="multi-view (Fig. 4): 105^3 x 2 -> 21^3 x 3, fixed diamond-kernel decimation by 2 and 4")
