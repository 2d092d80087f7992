"""Masked-LM training of the protein model (training/masked_lm.py): BERT's 15 % / 80-10-10 corruption, and the
evaluation metrics as sums over masked positions."""

from __future__ import annotations

import math

import torch

from models.protein import ProteinLM
from models.protein_alphabet import Alphabet
from training.masked_lm import MaskedLMModule, mask_residues


def _batch(n: int = 64, length: int = 200) -> torch.Tensor:
    alphabet = Alphabet.named("esm")
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor(alphabet.residue_ids)[torch.randint(20, (n, length), generator=g)]
    ids[:, 0], ids[:, -1] = alphabet.cls, alphabet.eos
    ids[1::2, length // 2:] = alphabet.pad  # half the rows padded: their residues end earlier
    ids[1::2, length // 2 - 1] = alphabet.eos
    return ids


def test_corruption_chooses_15_percent_of_residues_and_splits_them_80_10_10() -> None:
    alphabet = Alphabet.named("esm")
    ids = _batch()
    specials = torch.tensor([alphabet.cls, alphabet.eos, alphabet.unk, alphabet.mask])
    residues = torch.tensor(alphabet.residue_ids)
    corrupted, targets = mask_residues(ids, residues=residues, mask_id=alphabet.mask, pad_id=alphabet.pad,
                                       specials=specials, generator=torch.Generator().manual_seed(1))
    chosen = targets.ne(-100)
    maskable = ~torch.isin(ids, specials) & ids.ne(alphabet.pad)
    assert not (chosen & ~maskable).any()  # never a special token or padding
    assert torch.equal(targets[chosen], ids[chosen])
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    n, share = int(maskable.sum()), chosen.sum().item() / maskable.sum().item()
    # Binomial standard errors: 15 % of n, then 80 / 10 / 10 of the chosen (the last 10 % include random draws
    # that hit the true residue, 1 / 20 of the random 10 %).
    assert abs(share - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    k = int(chosen.sum())
    masked = (corrupted.eq(alphabet.mask) & chosen).sum().item() / k
    same = (corrupted.eq(ids) & chosen).sum().item() / k
    assert abs(masked - 0.8) < 4 * math.sqrt(0.8 * 0.2 / k)
    assert abs(same - (0.1 + 0.1 / 20)) < 4 * math.sqrt(0.105 * 0.895 / k)
    assert torch.isin(corrupted[chosen], torch.cat([residues, torch.tensor([alphabet.mask])])).all()


def test_evaluation_perplexity_and_accuracy_are_over_masked_positions() -> None:
    torch.manual_seed(0)
    net = ProteinLM(dim=32, depth=1, num_heads=2, ffn_dim=64).eval()
    module = MaskedLMModule(net, optimizer=lambda params: torch.optim.AdamW(params))
    module.log = lambda name, value, **_: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    logged: dict[str, float] = {}
    ids = _batch(8, 40)
    with torch.no_grad():
        module.test_step(ids, 0)
        module.on_test_epoch_end()
        # The same masks, by hand: the generator is seeded by the batch index.
        inputs, targets = module._corrupt(ids, seed=0 + 1_000_003)
        logits = net(inputs, ids.eq(1))
    chosen = targets.ne(-100)
    nll = torch.nn.functional.cross_entropy(logits[chosen], targets[chosen])
    assert math.isclose(logged["test/perplexity"], math.exp(nll.item()), rel_tol=1e-5)
    accuracy = logits[chosen].argmax(-1).eq(targets[chosen]).float().mean().item()
    assert math.isclose(logged["test/accuracy"], accuracy, rel_tol=1e-6)


def test_a_training_step_reaches_every_trained_parameter_and_not_the_contact_head() -> None:
    # DDP waits for a gradient of every trainable parameter: the contact head (fitted by scikit-learn on frozen
    # maps) must not be one, and every other parameter must get its gradient from the masked-LM loss.
    torch.manual_seed(0)
    net = ProteinLM(dim=32, depth=2, num_heads=2, ffn_dim=64)
    module = MaskedLMModule(net, optimizer=lambda params: torch.optim.AdamW(params))
    module.log = lambda *_, **__: None  # type: ignore[method-assign]
    module.training_step(_batch(8, 40), 0).backward()
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trained == {n for n, p in net.named_parameters() if p.grad is not None}
    assert not any(n.startswith("contact_head") for n in trained) and len(trained) > 10
