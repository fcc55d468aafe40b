"""The three-resolution body that crop4_connection and decimation4 share (RegNet Figs. 4 and 5).

The two designs differ only in how they make their R1/R2/R4 inputs (crops and max-pooling versus
fixed decimation); from the second convolution of each path on, the layers are the same, so both
build them here. Layer names are RegNet's (conv{i}_R{r}, up_R2, merge, conv{i}_FC).
"""
from __future__ import annotations

from keras import layers

from regnet.networks.layers import TrilinearUpsample, centre_crop, conv_block
from regnet.networks.spec import NetworkOptions


def r1_path(h, o: NetworkOptions):
    """Six valid convolutions (20 ... 32 channels) after conv1_R1."""
    for i, filters in enumerate((20, 24, 28, 32, 32, 32), start=2):
        h = conv_block(h, o.channels(filters), f"conv{i}_R1", batch_norm=o.batch_norm)
    return h


def r2_path(h, conv1_r1, skip_crop: int, o: NetworkOptions):
    """conv2_R2, four dilated convolutions, Up, the R1 skip, conv8_R2. Returns (r2, conv5_R2)."""
    h = conv_block(h, o.channels(30), "conv2_R2", batch_norm=o.batch_norm)
    conv5_r2 = None
    for i, filters in enumerate((32, 34, 36, 38), start=3):
        h = conv_block(h, o.channels(filters), f"conv{i}_R2", batch_norm=o.batch_norm, dilation=2)
        if i == 5:
            conv5_r2 = h
    h = TrilinearUpsample(name="up_R2")(h)
    h = layers.Concatenate(name="concat_R2")([h, centre_crop(conv1_r1, skip_crop, "crop_R2_skip")])
    return conv_block(h, o.channels(40), "conv8_R2", batch_norm=o.batch_norm), conv5_r2


def r4_path(h, conv5_r2, conv1_r1, skip_crop: int, o: NetworkOptions):
    """conv2_R4, three dilated convolutions, Up, the R2 skip, conv7_R4, Up, the R1 skip, conv9_R4."""
    h = conv_block(h, o.channels(40), "conv2_R4", batch_norm=o.batch_norm)
    for i, filters in enumerate((42, 44, 46), start=3):
        h = conv_block(h, o.channels(filters), f"conv{i}_R4", batch_norm=o.batch_norm, dilation=2)
    h = TrilinearUpsample(name="up1_R4")(h)
    h = layers.Concatenate(name="concat1_R4")([h, centre_crop(conv5_r2, 1, "crop_R4_skip1")])
    h = conv_block(h, o.channels(46), "conv7_R4", batch_norm=o.batch_norm)
    h = TrilinearUpsample(name="up2_R4")(h)
    h = layers.Concatenate(name="concat2_R4")([h, centre_crop(conv1_r1, skip_crop, "crop_R4_skip2")])
    return conv_block(h, o.channels(40), "conv9_R4", batch_norm=o.batch_norm)


def merge_head(r1, r2, r4, o: NetworkOptions):
    """Concatenate the three paths, then two ELU convolutions (120, 50) before the DVF head."""
    h = layers.Concatenate(name="merge")([r1, r2, r4])
    h = conv_block(h, o.channels(120), "conv1_FC", batch_norm=o.batch_norm, activation="elu")
    return conv_block(h, o.channels(50), "conv2_FC", batch_norm=o.batch_norm, activation="elu")
