"""The registry and the Format protocol every format shares."""

import copy

import pytest
import torch
from jsonargparse import ArgumentParser

from cslaws.formats import FORMATS, Format, get_format, make_format, register_format
from cslaws.formats.compose import Compose
from cslaws.formats.hadamard import Hadamard, fwht
from cslaws.formats.int import Int
from cslaws.formats.sparse import Magnitude


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown format 'int3'; registered formats: .*dense.*int.*magnitude"):
        get_format("int3")


def test_a_name_cannot_be_taken_twice() -> None:
    with pytest.raises(ValueError, match="'int' is already registered"):
        register_format("int")(type("Other", (Format,), {}))
    with pytest.raises(TypeError, match="needs a Format subclass"):
        register_format("thing")(int)


def test_registered_names_are_set_on_the_class() -> None:
    assert all(cls.name == name for name, cls in FORMATS.items())
    assert isinstance(make_format("int", bits=3), Int) and make_format("int", bits=3).bits == 3


def test_nested_spec_is_config_data_that_rebuilds_the_same_format() -> None:
    fmt = Compose([Magnitude(sparsity=0.5), Int(bits=4, backward="trust")])
    spec = fmt.spec()
    assert spec["class_path"] == "cslaws.formats.compose.Compose"
    inner = spec["init_args"]["formats"]
    assert [f["class_path"] for f in inner] == ["cslaws.formats.sparse.Magnitude", "cslaws.formats.int.Int"]
    assert inner[1]["init_args"]["bits"] == 4 and inner[1]["init_args"]["backward"] == "trust"
    parser = ArgumentParser()
    parser.add_argument("--fmt", type=Format)
    rebuilt = parser.instantiate_classes(parser.parse_object({"fmt": copy.deepcopy(spec)})).fmt  # it parses in place
    assert rebuilt.spec() == spec
    x = torch.randn(8, 64)
    assert torch.equal(rebuilt.compress(x), fmt.compress(x))


def test_reference_is_the_basis_of_the_output() -> None:
    x = torch.randn(4, 256)
    full = Hadamard(Int(bits=4), block=128, variant="full")
    half = Hadamard(Int(bits=4), block=128, variant="half")
    assert torch.equal(full.reference(x), x)
    torch.testing.assert_close(half.reference(x), fwht(x, 128))
    # the half variant's error, measured in its own basis, equals the full variant's (H is orthogonal)
    err_half = (half.compress(x) - half.reference(x)).pow(2).mean()
    err_full = (full.compress(x) - x).pow(2).mean()
    torch.testing.assert_close(err_half, err_full, rtol=1e-5, atol=1e-7)


def test_a_rotated_format_must_say_how_it_rotates() -> None:
    class Rotated(Format):
        keeps_rotated_basis = True

    with pytest.raises(NotImplementedError, match="Rotated keeps a rotated basis"):
        Rotated().reference(torch.zeros(2))


def test_the_default_compress_sparse_zeroes_the_pruned_in_both_grad_modes() -> None:
    """Forward: the survivors compressed, exact zeros elsewhere, with or without autograd; backward: the
    format's own rule on the survivors (here the derivative 0.5 of halving), the identity on the pruned."""

    class Halve(Format):
        def compress(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x

    x = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    keep = torch.tensor([[True, False, True, False]])
    expected = torch.tensor([[0.5, 0.0, 1.5, 0.0]])
    with torch.no_grad():
        assert torch.equal(Halve().compress_sparse(x, keep), expected)
    leaf = x.clone().requires_grad_()
    out = Halve().compress_sparse(leaf, keep)
    assert torch.equal(out.detach(), expected)
    out.sum().backward()
    assert torch.equal(leaf.grad, torch.tensor([[0.5, 1.0, 0.5, 1.0]]))
