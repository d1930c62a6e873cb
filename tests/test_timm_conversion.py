"""from_timm / to_timm are lossless both ways and read the config from the model."""
import torch
from hypothesis import given

from lowlevel import ViTConfig, param_shapes
from paper.formats.timm import from_timm, to_timm
from paper.reference_models import timm_vit
from tests.helpers import random_params, vit_configs


@given(vit_configs())
def test_round_trip_through_timm_is_lossless(cfg):
    params = random_params(cfg, seed=1)
    model = timm_vit(cfg).double()
    model.load_state_dict(to_timm(params, cfg))
    cfg_back, params_back = from_timm(model)
    assert cfg_back == cfg
    assert params_back.keys() == params.keys() == param_shapes(cfg).keys()
    assert all(torch.equal(params_back[k], params[k]) for k in params)
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in to_timm(params_back, cfg_back).items())


def test_from_state_dict_infers_shapes_and_takes_overrides():
    cfg = ViTConfig(image_size=(16, 24), patch_size=8, dim=12, depth=2, num_heads=3, mlp_dim=20, num_classes=4,
                    layer_norm_eps=1e-12, gelu="tanh")
    sd = timm_vit(cfg).state_dict()
    cfg_back, params = from_timm(sd, num_heads=3, image_size=(16, 24), layer_norm_eps=1e-12, gelu="tanh")
    assert cfg_back == cfg
    assert all(torch.equal(v, sd[k]) for k, v in to_timm(params, cfg_back).items())
