"""crop4_connection ("U-Net advanced", RegNet Fig. 5): 101^3 x 2 -> 21^3 x 3, the released multi-stage network.

Three resolutions from one first convolution: R1 crops it, R2 and R4 max-pool it, dilated
convolutions widen the view, fixed trilinear 'Up' layers bring R2/R4 back to the R1 grid.
Crops are the paper's constants, so the network also takes 101 + 4k voxels (-> 21 + 4k).
"""
from keras import layers

from regnet.networks.layers import centre_crop, conv_block
from regnet.networks.multiscale import merge_head, r1_path, r2_path, r4_path
from regnet.networks.spec import NetworkOptions, NetworkSpec


def graph(x, o: NetworkOptions):
    c, bn = o.channels, o.batch_norm
    conv1_r1 = conv_block(x, c(16), "conv1_R1", batch_norm=bn)
    r1 = r1_path(centre_crop(conv1_r1, 31, "crop_R1"), o)
    conv1_r2 = conv_block(layers.MaxPooling3D(2, name="max_R2")(conv1_r1), c(30), "conv1_R2", batch_norm=bn)
    r2, conv5_r2 = r2_path(centre_crop(conv1_r2, 8, "crop_R2"), conv1_r1, 36, o)
    h = conv_block(layers.MaxPooling3D(2, name="max_R4")(conv1_r2), c(40), "conv1_R4", batch_norm=bn)
    r4 = r4_path(h, conv5_r2, conv1_r1, 36, o)
    return merge_head(r1, r2, r4, o)


SPEC = NetworkSpec(
    name="crop4_connection", graph=graph, R=50, Ry=10, resize_unit=4, min_input=81,
    paper_parameters=1_262_973,
    description="U-Net advanced (Fig. 5): 101^3 x 2 -> 21^3 x 3, crops + max-pool, the multi-stage default")
