"""unet1 (RegNet Fig. 3) and its twin crop5_connection: a small U-Net on a whole padded volume, 125^3 -> 125^3.

Three max-pools (two 'same', one 'valid') and three fixed trilinear 'Up' layers (n -> 2n+1, then
zero-pad 1 where needed), so it takes 125 + 8k voxels and returns the same size. crop5 differs
only in the last 3x3x3 convolution's activation (ReLU instead of ELU); RegNet used it at stage 4.
"""
from keras import layers

from regnet.networks.layers import TrilinearUpsample, conv_block
from regnet.networks.spec import NetworkOptions, NetworkSpec


def _graph(x, o: NetworkOptions, last_activation: str):
    c, bn = o.channels, o.batch_norm
    conv1_r1 = conv_block(x, c(12), "conv1_R1", batch_norm=bn, padding="same")
    h = layers.MaxPooling3D(2, padding="same", name="max_R2")(conv1_r1)
    conv1_r2 = conv_block(h, c(24), "conv1_R2", batch_norm=bn)
    h = layers.MaxPooling3D(2, padding="same", name="max_R3")(conv1_r2)
    conv1_r3 = conv_block(h, c(28), "conv1_R3", batch_norm=bn)
    h = layers.MaxPooling3D(2, padding="valid", name="max_R4")(conv1_r3)
    for i, filters in enumerate((32, 40, 44), start=1):
        h = conv_block(h, c(filters), f"conv{i}_R4", batch_norm=bn, padding="same")

    h = TrilinearUpsample(name="up_R3")(h)
    h = layers.Concatenate(name="concat_R3")([h, conv1_r3])
    h = conv_block(h, c(32), "conv2_R3", batch_norm=bn, padding="same")
    h = layers.ZeroPadding3D(1, name="pad_R2")(TrilinearUpsample(name="up_R2")(h))
    h = layers.Concatenate(name="concat_R2")([h, conv1_r2])
    h = conv_block(h, c(18), "conv2_R2", batch_norm=bn, padding="same")
    h = layers.ZeroPadding3D(1, name="pad_R1")(TrilinearUpsample(name="up_R1")(h))
    h = layers.Concatenate(name="concat_R1")([h, conv1_r1])
    return conv_block(h, c(12), "conv2_R1", batch_norm=bn, padding="same", activation=last_activation)


def graph(x, o: NetworkOptions):
    return _graph(x, o, "elu")


def graph_crop5(x, o: NetworkOptions):
    return _graph(x, o, "relu")


SPEC = NetworkSpec(
    name="unet1", graph=graph, R=62, Ry=62, resize_unit=8, min_input=21, paper_parameters=232_749,
    full_image=True, description="U-Net (Fig. 3) on a whole 125^3 padded volume -> 125^3 DVF")

SPEC_CROP5 = NetworkSpec(
    name="crop5_connection", graph=graph_crop5, R=62, Ry=62, resize_unit=8, min_input=21,
    paper_parameters=232_749, full_image=True,
    description="unet1 with a ReLU last 3x3x3 convolution (RegNet used it at stage 4 only)")
