"""What a dual-branch generator hands the interpreter: the channels of the feature maps its synthesis network returns.

A leaf module (it imports nothing of the project), so that the config checks and the latent helpers can both use it.
"""


def feature_channels(G):
    """Channels of each feature map ``G.synthesis(..., return_features=True)`` returns, in order ([x0, x] per block)."""
    out = []
    for res in G.synthesis.block_resolutions:
        c = getattr(G.synthesis, f'b{res}').conv1.out_channels
        out += [c, c]
    return out
