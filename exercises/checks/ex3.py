"""Exercise 3's checks: the learner's carry_over and fine_tuning_optimizer on tiny stage-10 models
whose two vocabularies differ as a dictionary's and tiny Shakespeare's do, the chosen pre-training
text against the validation text, then a small version of the experiment.

The pre-trained model here is stage 10's at a tiny size with every weight moved off its
initialisation (layer norms included), so that a weight left fresh shows; its vocabulary has no
capitals, and the fine-tuning one no digits but a '3', so the ids of the shared characters differ.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from types import ModuleType

import torch

import harness
import harness.checkpoints
import harness.cli
from exercises import learner_stage, pretraining
from exercises.checks import Check, Failed
from tools import corpus

NAME = "ex3_pretrain"
PER_CHARACTER = {  # the tensors with a row for each character, and what a row of each is called
    "token_embedding_table.weight": ("row", "rows"),
    "lm_head.weight": ("row", "rows"),
    "lm_head.bias": ("entry", "entries"),
}
PRE_VOCAB = "\n !\"&'(),-.0123456789:;?abcdefghijklmnopqrstuvwxyz"  # 50: a lower-case dictionary
FINE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 65: tiny Shakespeare's
SHARED = [ch for ch in FINE_VOCAB if ch in PRE_VOCAB]  # 38, at other ids in the two
NEW = [ch for ch in FINE_VOCAB if ch not in PRE_VOCAB]  # 27: '$' and the capitals
TINY = dict(batch_size=4, block_size=8, n_embd=16, n_head=2, n_layer=1, dropout=0.0)
PRETRAINING_RATE, FINE_TUNING_RATE = 3e-3, 1e-4  # the experiment's pre-training rate; a rate no preset has
# what pre-training reads at the experiment's default budget (steps x batch_size x block_size): a
# text smaller than this is read more than once, and a gap between train and val loss opens
READS = pretraining.PRETRAIN_STEPS * pretraining.RECIPE["batch_size"] * pretraining.RECIPE["block_size"]
SMALL = dict(  # the small experiment: seconds on two cores
    pretrain_steps=150,
    steps=[100],
    eval_interval=50,
    flags=["--n_embd", "32", "--n_head", "2", "--n_layer", "2", "--block_size", "32", "--batch_size", "16"]
    + ["--eval_iters", "4", "--device", "cpu", "--num_tokens", "1"],
)


@functools.cache
def stage() -> ModuleType:
    return learner_stage.stage_10_with(None)


def config(**overrides):
    return stage().Config(**{**TINY, **overrides})


@functools.cache
def pretrained_checkpoint() -> harness.checkpoints.Checkpoint:
    """A pre-trained model as the experiment hands it over: weights, vocabulary, AdamW's state
    after some steps at the pre-training rate, its Config."""
    cfg = config(learning_rate=PRETRAINING_RATE)
    torch.manual_seed(1)
    model = stage().LanguageModel(len(PRE_VOCAB), cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    batches = torch.Generator().manual_seed(1)
    for _ in range(2):
        idx = torch.randint(len(PRE_VOCAB), (4, cfg.block_size + 1), generator=batches)  # (B, T + 1)
        _, loss = model(idx[:, :-1].contiguous(), idx[:, 1:].contiguous())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # every weight away from any fresh model's, layer norms' ones and zeros too
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=batches))
    return harness.checkpoints.Checkpoint(
        stage=learner_stage.STAGE_10,
        config=dataclasses.asdict(cfg),
        vocab=PRE_VOCAB,
        step=2,
        model={k: v.clone() for k, v in model.state_dict().items()},
        optimizer=optimizer.state_dict(),
        history=[],
        elapsed=0.0,
        rng={},
    )


def part(module: ModuleType, name: str):
    """The learner's function or setting called name; a missing one is a finding, not a crash."""
    if not hasattr(module, name) or (name != "PRETRAINING_TEXT" and not callable(getattr(module, name))):
        raise Failed(f"the file has no {name}: keep the names the exercise gives them")
    return getattr(module, name)


@dataclasses.dataclass
class Carried:
    """One call of the learner's carry_over: the weights before (fresh), after (got), and the source."""

    fresh: dict[str, torch.Tensor]
    got: dict[str, torch.Tensor]
    theirs: dict[str, torch.Tensor]


def carried(module: ModuleType) -> Carried:
    """The learner's carry_over on a fresh tiny model for FINE_VOCAB, from pretrained_checkpoint()."""
    source = pretrained_checkpoint()
    torch.manual_seed(0)
    model = stage().LanguageModel(len(FINE_VOCAB), config(learning_rate=FINE_TUNING_RATE))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        returned = part(module, "carry_over")(copy.deepcopy(source), model, FINE_VOCAB)
    except RuntimeError as e:
        if "size mismatch" in str(e):
            raise Failed(
                "load_state_dict of the pre-trained weights cannot fit: the two vocabularies differ in size "
                f"({len(PRE_VOCAB)} characters there, {len(FINE_VOCAB)} here); copy the per-character tensors "
                "row by row, by character"
            ) from None
        raise
    if returned is not None and returned is not model:
        raise Failed(
            f"carry_over returned a {type(returned).__name__}; put the weights into the model it is given "
            "(in place, under torch.no_grad()) and return nothing: the experiment trains that model"
        )
    got = model.state_dict()
    for name in PER_CHARACTER:
        if got[name].shape != fresh[name].shape:
            raise Failed(
                f"after carry_over, {name} is {tuple(got[name].shape)}, not {tuple(fresh[name].shape)}: keep the "
                "model built for the fine-tuning vocabulary, one row for each of its characters"
            )
    return Carried(fresh, got, source.model)


def ids(vocab: str) -> dict[str, int]:
    return {ch: i for i, ch in enumerate(vocab)}


def shared_rows(module: ModuleType) -> str:
    c = carried(module)
    new_id, old_id = ids(FINE_VOCAB), ids(PRE_VOCAB)
    for name, (row, rows) in PER_CHARACTER.items():
        got, theirs, fresh = c.got[name], c.theirs[name], c.fresh[name]
        wrong = [ch for ch in SHARED if not torch.equal(got[new_id[ch]], theirs[old_id[ch]])]
        if not wrong:
            continue
        ch = wrong[0]
        i, j = new_id[ch], old_id[ch]
        if all(torch.equal(got[new_id[s]], fresh[new_id[s]]) for s in SHARED):
            raise Failed(
                f"the {rows} of {name} are all still the fresh model's: it has one {row} for each character "
                f"too; carry the shared characters' {rows} over as well"
            )
        if i < len(theirs) and torch.equal(got[i], theirs[i]):
            raise Failed(
                f"{rows} copied by id: in {name} the {row} of {ch!r} (id {i} here) is the pre-trained {row} of id "
                f"{i}, which is {PRE_VOCAB[i]!r} there, while {ch!r} is id {j} there; map the {rows} by "
                "character, through the two vocabularies"
            )
        raise Failed(
            f"in {name} the {row} of {ch!r} (id {i} here, {j} in the pre-trained model) is not its pre-trained {row}"
            f"{'' if len(wrong) == 1 else f' (nor are those of {len(wrong) - 1} more shared characters)'}"
        )
    return (
        f"{len(SHARED)} characters shared, at other ids in the two vocabularies: "
        "token embedding, head weight and head bias"
    )


def rms(t: torch.Tensor) -> float:
    return t.pow(2).mean().sqrt().item()


def new_rows(module: ModuleType) -> str:
    """The rows of characters the pre-training text never had: as the fresh model initialised them,
    the mean of the pre-trained rows, or rows of the learner's own at the pre-trained rows' scale;
    never zeros, nor a copy of one character's row for another."""
    c = carried(module)
    new_id = ids(FINE_VOCAB)
    shown = ", ".join(repr(ch) for ch in NEW[:4]) + f" and {len(NEW) - 4} more"
    choices = {}
    for name, (row, rows) in PER_CHARACTER.items():
        got, theirs, fresh = c.got[name], c.theirs[name], c.fresh[name]
        mine = got[[new_id[ch] for ch in NEW]]  # (len(NEW), ...) the new characters' rows
        if torch.equal(mine, fresh[[new_id[ch] for ch in NEW]]):
            choices[name] = "as the fresh model initialised them"
            continue
        mean = theirs.mean(dim=0)
        if torch.allclose(mine, mean.expand_as(mine), atol=1e-6):
            choices[name] = "the mean of the pre-trained rows"
            continue
        if not mine.any():
            raise Failed(
                f"in {name} the {rows} of the characters the pre-training text never had ({shown}) are zero: "
                "leave them as the fresh model initialised them, or give them the mean of the pre-trained rows "
                "(zero rows make all of those characters look alike to the model at first)"
            )
        for i, ch in enumerate(NEW):
            copied = [k for k in range(len(theirs)) if torch.equal(mine[i], theirs[k])]
            if copied:
                raise Failed(
                    f"in {name} the {row} of {ch!r}, a character the pre-training text never had, is a copy of "
                    f"the pre-trained {row} of id {copied[0]} ({PRE_VOCAB[copied[0]]!r}): the model would take "
                    "one for the other; leave it as the fresh model initialised it"
                )
            twins = [NEW[j] for j in range(i) if torch.equal(mine[i], mine[j])]
            if twins:
                raise Failed(
                    f"in {name} the {row} of {ch!r} is the {row} of {twins[0]!r}: two new characters that look "
                    "alike to the model; leave them as the fresh model initialised them"
                )
        if not 0.25 <= rms(mine) / rms(theirs) <= 4:
            raise Failed(
                f"in {name} the {rows} of the new characters have a root mean square of {rms(mine):.3g}, far "
                f"from the pre-trained {rows}' {rms(theirs):.3g}: leave them as the fresh model initialised them"
            )
        choices[name] = f"{rows} of your own, at the pre-trained {rows}' scale"
    said = set(choices.values())
    how = said.pop() if len(said) == 1 else "; ".join(f"{k}: {v}" for k, v in choices.items())
    return f"{len(NEW)} characters new to the model ({shown}): {how}"


def other_weights(module: ModuleType) -> str:
    c = carried(module)
    rest = [k for k in c.fresh if k not in PER_CHARACTER]
    wrong = [k for k in rest if not torch.equal(c.got[k], c.theirs[k])]
    if wrong:
        fresh = [k for k in wrong if torch.equal(c.got[k], c.fresh[k])]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        if fresh:
            raise Failed(
                f"{fresh[0]}{more} is still the fresh model's: copy every tensor but the three with a row for each "
                "character as it is"
            )
        raise Failed(f"{wrong[0]}{more} is neither the pre-trained tensor nor the fresh one: copy it as it is")
    return f"all {len(rest)} others equal to the pre-trained ones"


def fresh_optimizer(module: ModuleType) -> str:
    source = pretrained_checkpoint()
    torch.manual_seed(0)
    cfg = config(learning_rate=FINE_TUNING_RATE)
    model = stage().LanguageModel(len(FINE_VOCAB), cfg)
    optimizer = part(module, "fine_tuning_optimizer")(model, copy.deepcopy(source), cfg)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise Failed(f"fine_tuning_optimizer returned a {type(optimizer).__name__}, not a torch.optim.AdamW")
    if not isinstance(optimizer, torch.optim.AdamW):
        raise Failed(
            f"fine_tuning_optimizer returned a {type(optimizer).__name__}: fine-tune with AdamW, as pre-training did"
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = list(model.parameters())
    if held != {id(p) for p in params}:
        inside = sum(id(p) in held for p in params)
        raise Failed(
            f"the optimizer holds {inside} of the model's {len(params)} parameters: build it over model.parameters(), "
            "the model that fine-tuning trains"
        )
    state = [s for s in optimizer.state.values() if s]
    if state:
        moments = sorted({k for s in state for k in s})
        raise Failed(
            f"the optimizer starts with state ({', '.join(moments)} for {len(state)} parameters): the pre-training's "
            "moments, which follow another text's gradients by another vocabulary's ids; start a fresh AdamW"
        )
    rates = {group["lr"] for group in optimizer.param_groups}
    if rates != {FINE_TUNING_RATE}:
        rate = max(rates, key=lambda r: r != FINE_TUNING_RATE)
        said = f"{rate:g}, pre-training's," if rate == PRETRAINING_RATE else f"{rate:g},"
        raise Failed(
            f"the optimizer's rate is {said} not the fine-tuning rate cfg.learning_rate ({FINE_TUNING_RATE:g})"
        )
    return f"AdamW over every parameter, no state, at cfg.learning_rate ({FINE_TUNING_RATE:g})"


def chosen_text(module: ModuleType, override: Path | None) -> Path:
    chosen = override or part(module, "PRETRAINING_TEXT")
    if chosen is None:
        raise Failed(
            "PRETRAINING_TEXT is not chosen yet: give the path of a large text (python tools/corpus.py makes "
            "data/gcide.txt from Webster's 1913 dictionary; its docstring says where to get it)"
        )
    path = pretraining.chosen_text(chosen)
    if not path.exists():
        raise Failed(f"no pre-training text at {path}: make it with python tools/corpus.py, or choose another")
    return path


def validation_text_unseen(override: Path | None, fine_tuning_text: Path | None, min_characters: int):
    def check(module: ModuleType) -> str:
        path = chosen_text(module, override)
        try:
            text = harness.cli.read_text(path, "PRETRAINING_TEXT")
            fine_tuning, where = harness.cli.load_text(fine_tuning_text)
        except harness.UserError as e:
            raise Failed(str(e)) from None
        runs = pretraining.validation_runs_in(text, fine_tuning)
        if runs:
            raise Failed(pretraining.overlap_error(path, runs, where.name))
        if len(text) < min_characters:
            raise Failed(
                f"{path} has {len(text):,} characters, fewer than pre-training reads ({min_characters:,}): "
                "the model would see it more than once, and a gap between train and val loss opens; choose a "
                "larger text"
            )
        return (
            f"{len(text):,} characters ({len(text) / len(fine_tuning):.0f} times {where.name}, "
            f"{len(text) / READS:.1f} times what {pretraining.PRETRAIN_STEPS} steps of pre-training read); "
            f"no run of {corpus.WINDOW} characters of {where.name}'s validation part in it"
        )

    return check


def small_experiment(override: Path | None, fine_tuning_text: Path | None, settings: dict):
    def check(module: ModuleType) -> str:
        path = chosen_text(module, override)
        experiment = pretraining.Experiment(corpus=path, data=fine_tuning_text, **settings)
        results = pretraining.small_experiment(module, experiment)
        pair = results["pairs"][0]
        tuned, scratch = pair.val["pre-trained"], pair.val["from scratch"]
        before = pair.history["pre-trained"][0]["val_loss"]
        fresh = pair.history["from scratch"][0]["val_loss"]
        figures = (
            f"at tiny sizes, pre-trained {experiment.pretrain_steps} steps, then {pair.steps} steps: val {tuned:.3f} "
            f"fine-tuned, {scratch:.3f} from scratch (before any step {before:.3f} against {fresh:.3f}); "
            "a small version, not the answer"
        )
        if not before < fresh:
            raise Failed(
                f"{figures}: before fine-tuning, the pre-trained model does no better than a fresh one, so what "
                "pre-training learned did not reach the model that fine-tunes"
            )
        return figures

    return check


SHARED_ROWS = "every shared character's rows carried over, by character"
NEW_ROWS = "a character new to the model keeps its fresh rows"
OTHERS = "every other weight copied exactly"
OPTIMIZER = "a fresh optimizer at the fine-tuning rate"
UNSEEN = "the validation text never in the pre-training text"
EXPERIMENT = "a small experiment: pre-train, fine-tune, from scratch"


def checks(
    pretraining_text: Path | None = None,
    fine_tuning_text: Path | None = None,
    min_characters: int = READS,
    **small,
) -> list[Check]:
    """Exercise 3's checks. pretraining_text: the text to check instead of the file's
    PRETRAINING_TEXT; fine_tuning_text: instead of tiny Shakespeare; min_characters: the size the
    pre-training text must have; small: Experiment fields for the small experiment (the tests
    make it tinier)."""
    settings = {**SMALL, **small}
    return [
        Check(SHARED_ROWS, shared_rows),
        Check(NEW_ROWS, new_rows),
        Check(OTHERS, other_weights),
        Check(OPTIMIZER, fresh_optimizer),
        Check(UNSEEN, validation_text_unseen(pretraining_text, fine_tuning_text, min_characters)),
        Check(
            EXPERIMENT,
            small_experiment(pretraining_text, fine_tuning_text, settings),
            needs=(SHARED_ROWS, NEW_ROWS, OTHERS, OPTIMIZER, UNSEEN),
        ),
    ]
