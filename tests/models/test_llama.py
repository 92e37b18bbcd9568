import pytest
import torch

from cslaws.formats.linear import CompressedLinear, LinearFactory
from cslaws.models.llama import SIZES, Llama, apply_rotary, get_size, non_embedding_params, rotary_tables

# Non-embedding parameter counts of the paper family as recorded by the QuEST runs themselves
# (tests/data/quest/runs.csv, column N; Panferov et al. 2025, IST-DASLab/QuEST for_plots/runs_for_scaling.json).
QUEST_N = {"30M": 30482560, "50M": 49556736, "100M": 102777856, "200M": 203188480, "430M": 443068288, "800M": 822151168}


@pytest.mark.parametrize("name", list(QUEST_N))
def test_paper_family_n_matches_quest_runs(name: str) -> None:
    assert non_embedding_params(SIZES[name]) == QUEST_N[name]


@pytest.mark.parametrize("name", ["nano", "micro", "milli", "tiny", "mini", "small", "medium", "30M"])
def test_model_reports_n_equal_to_closed_form(name: str) -> None:
    with torch.device("meta"):
        model = Llama(SIZES[name], vocab_size=1000)
    embedding = 2 * 1000 * SIZES[name].d_model
    assert model.n_params == non_embedding_params(SIZES[name])
    assert sum(p.numel() for p in model.parameters()) == model.n_params + embedding


def test_cpu_sizes_have_the_parameter_counts_of_the_readme() -> None:
    # README's size table; 2 layers x (4 d^2 attention + 3 x d x hidden SwiGLU) + norms, counted by hand for nano
    assert non_embedding_params(SIZES["nano"]) == 26_784 == 2 * (4 * 32 * 32 + 3 * 32 * 96 + 2 * 32) + 32
    assert [non_embedding_params(SIZES[s]) for s in ("14k", "23k", "44k", "micro")] == [13_944, 22_540, 43_720, 55_536]


def test_unknown_size_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model size 'huge'.*nano.*800M"):
        get_size("huge")


def test_causal_future_tokens_do_not_change_past_logits() -> None:
    torch.manual_seed(0)
    model = Llama(SIZES["nano"], vocab_size=50).eval()
    a = torch.randint(0, 50, (2, 12))
    b = a.clone()
    b[:, 7:] = torch.randint(0, 50, (2, 5))
    la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :7], lb[:, :7])
    assert not torch.allclose(la[:, 7:], lb[:, 7:])


def test_rotary_tables_and_rotation_against_complex_reference() -> None:
    cos, sin = rotary_tables(seq_len=9, head_dim=8)
    assert cos.shape == sin.shape == (9, 4)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    # Reference: channel pairs as complex numbers multiplied by e^{i t theta_j}, theta_j = 10000^(-2j/8).
    theta = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angle = torch.arange(9, dtype=torch.float64)[:, None] * theta
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(angle), angle)
    expected = torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    got = apply_rotary(x, cos.double(), sin.double())
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), x.norm(dim=-1))


def test_rotary_makes_attention_scores_relative() -> None:
    cos, sin = rotary_tables(seq_len=20, head_dim=4)
    q, k = torch.randn(4), torch.randn(4)

    def score(i: int, j: int) -> torch.Tensor:
        qi = apply_rotary(q.view(1, 1, 1, 4), cos[i : i + 1], sin[i : i + 1]).flatten()
        kj = apply_rotary(k.view(1, 1, 1, 4), cos[j : j + 1], sin[j : j + 1]).flatten()
        return qi @ kj

    torch.testing.assert_close(score(5, 2), score(15, 12), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(score(5, 2), score(3, 0), rtol=1e-4, atol=1e-5)
    # and it is the offset that matters: one position more changes the score (no rotation would not)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3


def test_every_block_linear_comes_from_the_factory() -> None:
    from cslaws.formats.base import Format

    class Marked(Format):
        bits_per_value = 16.0

        def compress(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = Llama(SIZES["nano"], vocab_size=30, linear=LinearFactory(weight=Marked()))
    linears = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5 * SIZES["nano"].n_layer
    assert all(isinstance(m, CompressedLinear) for m in linears)
    assert not isinstance(model.head, CompressedLinear)
