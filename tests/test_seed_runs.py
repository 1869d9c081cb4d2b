"""The seed's runs as the seed ran them. Its two models are written out here, layer by layer,
from ../shared/SEED.md and nothing of flairseg.models; the registry, given the seed's knobs,
must build the same: the same parameters (shape for shape) and the same output shape.
Then `experiments/seed.yaml` at its full profile must be the seed's four runs, and
`seed_vs_ours` the same four beside our presets and each of our changes alone."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from flairseg.config import TrainConfig
from flairseg.models import build_model, model_defaults
from study import search as searches

# ---- the seed's models, as SEED.md specifies them ------------------------------------------


def seed_conv(cin: int, cout: int) -> list[nn.Module]:
    """A 3x3 conv, padding 1, then ReLU; no normalisation anywhere."""
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]


class SeedUNet(nn.Module):
    """enc1 3->64->64, pool, enc2 64->128->128, pool, bottom 128->256->256; up2 256->128,
    concat enc2, dec2 256->128->128; up1 128->64, concat enc1, dec1 128->64->64; 1x1 64->1."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(*seed_conv(3, 64), *seed_conv(64, 64))
        self.enc2 = nn.Sequential(*seed_conv(64, 128), *seed_conv(128, 128))
        self.bottom = nn.Sequential(*seed_conv(128, 256), *seed_conv(256, 256))
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(256, 128, 2, stride=2)
        self.dec2 = nn.Sequential(*seed_conv(256, 128), *seed_conv(128, 128))
        self.up1 = nn.ConvTranspose2d(128, 64, 2, stride=2)
        self.dec1 = nn.Sequential(*seed_conv(128, 64), *seed_conv(64, 64))
        self.out = nn.Conv2d(64, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return torch.sigmoid(self.out(d1))


class SeedEncoderLayer(nn.Module):
    """Pre-norm: x + Attention(LN1(x)), then x + MLP(LN2(x)), MLP = Linear, ReLU, Linear."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (tokens, B, dim)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class SeedSETR(nn.Module):
    """Patches flattened (channel, row, column) -> Linear -> + positional embedding; `depth`
    pre-norm layers, no final norm; transposed conv dim->256 and three 256->256 (kernel 2,
    stride 2, ReLU after each), 1x1 conv 256->1, sigmoid."""

    def __init__(
        self,
        img_size: int = 128,
        num_cuts: int = 4,
        in_ch: int = 3,
        num_classes: int = 1,
        dim: int = 1024,
        depth: int = 8,
        heads: int = 8,
        mlp_dim: int = 2048,
    ) -> None:
        super().__init__()
        self.num_cuts, self.patch, self.dim = num_cuts, img_size // num_cuts, dim
        self.embed = nn.Linear(self.patch * self.patch * in_ch, dim)
        self.pos = nn.Parameter(torch.randn(1, num_cuts**2, dim))
        self.layers = nn.ModuleList(SeedEncoderLayer(dim, heads, mlp_dim) for _ in range(depth))
        ups: list[nn.Module] = [nn.ConvTranspose2d(dim, 256, 2, stride=2), nn.ReLU()]
        for _ in range(3):
            ups += [nn.ConvTranspose2d(256, 256, 2, stride=2), nn.ReLU()]
        self.decoder = nn.Sequential(*ups, nn.Conv2d(256, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        n, p = self.num_cuts, self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, n, n, p, p)
        tokens = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, n * n, c * p * p)
        h = (self.embed(tokens) + self.pos).transpose(0, 1)  # (tokens, B, dim)
        for layer in self.layers:
            h = layer(h)
        grid = h.permute(1, 2, 0).reshape(b, self.dim, n, n)
        return torch.sigmoid(self.decoder(grid))


SEED_SETR = {"dim": 1024, "depth": 8, "heads": 8, "mlp_dim": 2048}
SEED_KNOBS = {
    "unet": {"depth": 2, "width": 64, "norm": "none"},
    "setr": {**SEED_SETR, "encoder": "seed", "decoder": "seed"},
}


def shapes(model: nn.Module) -> Counter:
    """The model's parameters as a multiset of shapes: layer for layer, whatever the names."""
    return Counter(tuple(p.shape) for p in model.parameters())


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_rebuilt_seed_has_the_decks_parameter_counts() -> None:
    assert count(SeedUNet()) == 1_862_849
    assert count(SeedSETR(128, num_cuts=8)) == 69_888_257


@pytest.mark.parametrize("size", [128, 64])
def test_the_registry_builds_the_seeds_unet(size: int) -> None:
    ours, seed = build_model("unet", 3, size, **SEED_KNOBS["unet"]), SeedUNet()
    assert count(ours) == count(seed) == 1_862_849
    assert shapes(ours) == shapes(seed)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert ours(x).shape == seed(x).shape == (2, 1, size, size)


@pytest.mark.parametrize("size", [128, 64])
def test_the_registry_builds_the_seeds_setr(size: int) -> None:
    cuts = size // 16  # the seed's four fixed decoder stages
    ours = build_model("setr", 3, size, num_cuts=cuts, **SEED_KNOBS["setr"])
    seed = SeedSETR(size, num_cuts=cuts, **SEED_SETR)
    assert count(ours) == count(seed)
    if size == 128:
        assert count(ours) == 69_888_257
    assert shapes(ours) == shapes(seed)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert ours(x).shape == seed(x).shape == (1, 1, size, size)


def copy_weights(pairs: list[tuple[nn.Module, nn.Module]]) -> None:
    """Give each of our layers its seed counterpart's weights (the same shapes)."""
    with torch.no_grad():
        for ours, seed in pairs:
            for mine, theirs in zip(ours.parameters(), seed.parameters(), strict=True):
                mine.copy_(theirs)


def test_given_the_seeds_weights_our_layers_compute_the_seeds_output() -> None:
    """Layer for layer, not only in count: with the seed's weights copied in, our models'
    probabilities are the seed's (its ReLU MLP, no final norm, its patch order, its skips)."""
    torch.manual_seed(0)
    unet, seed_unet = build_model("unet", 3, 64, **SEED_KNOBS["unet"]), SeedUNet()
    blocks = [*unet.down, unet.bottom, unet.merge[0], unet.merge[1]]
    seeds = [seed_unet.enc1, seed_unet.enc2, seed_unet.bottom, seed_unet.dec2, seed_unet.dec1]
    pairs = [(b[i], s[j]) for b, s in zip(blocks, seeds, strict=True) for i, j in ((0, 0), (3, 2))]
    pairs += [(unet.up[0], seed_unet.up2), (unet.up[1], seed_unet.up1)]
    copy_weights([*pairs, (unet.head, seed_unet.out)])
    setr = build_model("setr", 3, 64, num_cuts=4, **SEED_KNOBS["setr"])
    seed_setr = SeedSETR(64, num_cuts=4, **SEED_SETR)
    pairs = [(setr.embed, seed_setr.embed), (setr.head, seed_setr.decoder[8])]
    for mine, theirs in zip(setr.encoder.layers, seed_setr.layers, strict=True):
        pairs += [(mine.self_attn, theirs.attn), (mine.linear1, theirs.mlp[0])]
        pairs += [(mine.linear2, theirs.mlp[2]), (mine.norm1, theirs.ln1), (mine.norm2, theirs.ln2)]
    pairs += [(setr.decoder[i], seed_setr.decoder[i]) for i in (0, 2, 4, 6)]
    copy_weights(pairs)
    with torch.no_grad():
        setr.pos.copy_(seed_setr.pos)
    x = torch.randn(2, 3, 64, 64)
    for ours, seed in ((unet, seed_unet), (setr, seed_setr)):
        ours.eval(), seed.eval()
        with torch.no_grad():
            torch.testing.assert_close(torch.sigmoid(ours(x)), seed(x), atol=1e-5, rtol=1e-4)


def test_the_setr_preset_keeps_our_decoder_and_final_norm() -> None:
    """The issue's figure for ours at the seed's size; the knobs' presets are ours."""
    model = build_model("setr", 3, 128, num_cuts=8, **SEED_SETR)
    assert count(model) == 70_842_241
    assert model_defaults("setr")["encoder"] == model_defaults("setr")["decoder"] == "ours"


# ---- the seed's four runs -------------------------------------------------------------------

SEED_RUNS = [  # (model, loss, alpha, epochs) of the seed's four runs, in its order
    ("unet", "dice", None, 20),
    ("unet", "combo", 0.7, 20),
    ("unet", "combo", 0.5, 40),
    ("setr", "dice", None, 350),
]


def assert_the_seeds_run(config: TrainConfig, run: tuple) -> None:
    model, loss, alpha, epochs = run
    assert (config.model, config.loss, config.epochs) == (model, loss, epochs)
    if alpha is not None:
        assert config.alpha == alpha
    assert (config.image_size, config.channels, config.lr) == (128, 3, 1e-4)
    knobs = {**SEED_KNOBS[model], **({"num_cuts": 8} if model == "setr" else {})}
    assert config.model_kwargs() == knobs
    if model == "setr":
        assert config.num_cuts == config.image_size // 16


def test_the_seed_search_is_the_seeds_four_runs() -> None:
    search = searches.load("seed", "full")
    assert len(search.grid) == search.trials == 4
    assert not search.asha.enabled  # no early stopping
    for entry, run in zip(search.grid, SEED_RUNS, strict=True):
        config = search.config_for(entry)
        assert_the_seeds_run(config, run)
        assert count(config.build_model()) == count(
            SeedUNet() if run[0] == "unet" else SeedSETR(128, 8)
        )


def test_the_seed_laptop_profile_shrinks_and_keeps_the_seeds_layers() -> None:
    search = searches.load("seed", "laptop")
    configs = [search.config_for(entry) for entry in search.grid]
    assert [c.epochs for c in configs] == [1, 1, 2, 18]
    assert {c.image_size for c in configs} == {64} and {c.lr for c in configs} == {1e-4}
    setr = configs[-1]
    assert (setr.num_cuts, setr.encoder, setr.decoder) == (4, "seed", "seed")
    assert {c.norm for c in configs[:3]} == {"none"}


# ---- the seed beside ours -------------------------------------------------------------------

OUR_LR = {"unet": 1e-3, "setr": 3e-4}  # TrainConfig's default; setr_shape's
OURS_CHANGE = {  # what our presets change in each model (heads 8 and num_cuts 8 both)
    "unet": {"norm", "lr"},
    "setr": {"encoder", "decoder", "lr", "dim", "depth", "mlp_dim"},
}


def test_seed_vs_ours_sets_each_change_beside_the_seeds_run() -> None:
    seed = searches.load("seed", "full")
    search = searches.load("seed_vs_ours", "full")
    assert not search.asha.enabled and search.trials == len(search.grid)
    by_name = {g["name"]: search.config_for(g).to_dict() for g in search.grid}
    for entry in seed.grid:  # the seed's four, exactly as `seed` runs them
        runs = {n.removeprefix(entry["name"] + "-"): c for n, c in by_name.items()}
        runs = {k: c for k, c in runs.items() if "-" not in k}
        want = seed.config_for(entry)
        model = want.model
        assert runs.pop("seed") == want.to_dict()
        ours = TrainConfig.from_dict(runs.pop("ours"))
        changed = {k for k, v in ours.to_dict().items() if v != want.to_dict()[k]}
        assert changed == OURS_CHANGE[model]
        assert all(model_defaults(model)[k] == v for k, v in ours.model_kwargs().items())
        assert ours.lr == OUR_LR[model] and ours.epochs == want.epochs
        assert set(runs) == ({"norm", "lr"} if model == "unet" else {"encoder", "decoder", "lr"})
        for change, config in runs.items():
            changed = {k for k, v in config.items() if v != want.to_dict()[k]}
            assert changed == {change}, (entry["name"], change)  # one change, to ours
            ours_value = ours.lr if change == "lr" else model_defaults(model)[change]
            assert config[change] == ours_value
    assert len(by_name) == 4 * 3 + 5


def test_seed_vs_ours_laptop_profile_is_the_seed_laptop_profile_shorter() -> None:
    """On a laptop the seed's runs are `seed`'s laptop runs, with a fifth of the epochs, at
    most 8 (the seed's SETR decoder is slow on a CPU); our SETR keeps its presets."""
    seed = searches.load("seed", "laptop")
    search = searches.load("seed_vs_ours", "laptop")
    configs = {g["name"]: search.config_for(g) for g in search.grid}
    for entry in seed.grid:
        want = seed.config_for(entry).replace(epochs=min(8, round(entry["epochs"] / 5)))
        assert configs[entry["name"] + "-seed"] == want
    assert {c.image_size for c in configs.values()} == {64}
    assert sum(c.epochs for c in configs.values()) == 4 * (4 + 4 + 8) + 5 * 8
    ours = configs["setr-dice-350-ours"]
    assert ours.model_kwargs() == {**model_defaults("setr")}
