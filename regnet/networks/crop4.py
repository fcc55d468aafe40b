"""crop4_connection ("U-Net advanced", RegNet Fig. 5): 101^3 x 2 -> 21^3 x 3, the released multi-stage network.

Three resolutions from one first convolution: R1 crops it, R2 and R4 max-pool it, dilated
convolutions widen the view, fixed trilinear 'Up' layers bring R2/R4 back to the R1 grid.
Crops are the paper's constants, so the network also takes 101 + 4k voxels (-> 21 + 4k).
"""
from keras import layers

from regnet.networks.layers import TrilinearUpsample, centre_crop, conv_block
from regnet.networks.spec import NetworkOptions, NetworkSpec


def graph(x, o: NetworkOptions):
    c, bn = o.channels, o.batch_norm
    conv1_r1 = conv_block(x, c(16), "conv1_R1", batch_norm=bn)
    h = centre_crop(conv1_r1, 31, "crop_R1")
    for i, filters in enumerate((20, 24, 28, 32, 32, 32), start=2):
        h = conv_block(h, c(filters), f"conv{i}_R1", batch_norm=bn)
    r1 = h

    conv1_r2 = conv_block(layers.MaxPooling3D(2, name="max_R2")(conv1_r1), c(30), "conv1_R2", batch_norm=bn)
    h = conv_block(centre_crop(conv1_r2, 8, "crop_R2"), c(30), "conv2_R2", batch_norm=bn)
    for i, filters in enumerate((32, 34, 36, 38), start=3):
        h = conv_block(h, c(filters), f"conv{i}_R2", batch_norm=bn, dilation=2)
        if i == 5:
            conv5_r2 = h
    h = TrilinearUpsample(name="up_R2")(h)
    h = layers.Concatenate(name="concat_R2")([h, centre_crop(conv1_r1, 36, "crop_R2_skip")])
    r2 = conv_block(h, c(40), "conv8_R2", batch_norm=bn)

    h = layers.MaxPooling3D(2, name="max_R4")(conv1_r2)
    h = conv_block(h, c(40), "conv1_R4", batch_norm=bn)
    h = conv_block(h, c(40), "conv2_R4", batch_norm=bn)
    for i, filters in enumerate((42, 44, 46), start=3):
        h = conv_block(h, c(filters), f"conv{i}_R4", batch_norm=bn, dilation=2)
    h = TrilinearUpsample(name="up1_R4")(h)
    h = layers.Concatenate(name="concat1_R4")([h, centre_crop(conv5_r2, 1, "crop_R4_skip1")])
    h = conv_block(h, c(46), "conv7_R4", batch_norm=bn)
    h = TrilinearUpsample(name="up2_R4")(h)
    h = layers.Concatenate(name="concat2_R4")([h, centre_crop(conv1_r1, 36, "crop_R4_skip2")])
    r4 = conv_block(h, c(40), "conv9_R4", batch_norm=bn)

    h = layers.Concatenate(name="merge")([r1, r2, r4])
    h = conv_block(h, c(120), "conv1_FC", batch_norm=bn, activation="elu")
    return conv_block(h, c(50), "conv2_FC", batch_norm=bn, activation="elu")


SPEC = NetworkSpec(
    name="crop4_connection", graph=graph, R=50, Ry=10, resize_unit=4, min_input=81,
    paper_parameters=1_262_973,
    description="U-Net advanced (Fig. 5): 101^3 x 2 -> 21^3 x 3, crops + max-pool, the multi-stage default")
