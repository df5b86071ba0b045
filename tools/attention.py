"""Look inside a trained stage: every head's attention over a prompt, and the odds of the next character.

    python tools/attention.py 10 --prompt "ROMEO:"           the maps as a PNG: checkpoints/10_gpt.attention.png
    python tools/attention.py 10 --prompt "ROMEO:" --text    the same in the terminal, for the last position
    python tools/attention.py 4 --prompt "To be, or" --positions 0 -1 --temperature 0.5 --top_k 5
    python tools/attention.py 10 --prompt "ROMEO:" --layers 1 -1   the first and the last layer only

It loads the stage's checkpoint, runs the prompt through the model once, as generate does before it
samples, and shows:
- for every layer and head, the T x T attention weights: row t says how position t shares its
  attention among positions 0..t (the future is masked). One PNG with matplotlib, rows layers and
  columns heads (matplotlib: `pip install matplotlib`); without it, or with --text, the positions
  each head weighs most, as text.
- the likeliest next characters with their probabilities, at --temperature and --top_k, computed as
  the stages' generate computes the distribution it draws from: softmax(common.adjust_logits(logits)).

The stages are not changed for this. Forward hooks keep each attention module's input and output
during the model's own forward pass, and the weights are recomputed from that input with the
module's own query and key layers and causal mask; tests/test_attention.py proves that they are the
weights the model used (times the module's values they give its output). Stage 03's fixed causal
average shows as uniform rows; stages 01-02 have no attention, and the tool says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root
import common  # noqa: E402
import harness  # noqa: E402
import harness.checkpoints  # noqa: E402
import harness.cli  # noqa: E402
import harness.training  # noqa: E402
import tools.stages  # noqa: E402
from tools import plot  # noqa: E402

VISIBLE = {"\n": "⏎", " ": "␣", "\t": "⇥"}  # characters that would otherwise be invisible on an axis
TOP_WEIGHTS = 3  # the text view lists the positions each head weighs most, this many
BAR_WIDTH = 40  # characters of bar for probability 1
EIGHTHS = " ▏▎▍▌▋▊▉"  # partial blocks: a bar's length in eighths of a character


def visible(ch: str) -> str:
    """A character as it can be seen in a label: ⏎ for a newline, ␣ for a space, an escape for a control."""
    if ch in VISIBLE:
        return VISIBLE[ch]
    return ch if ch.isprintable() else ascii(ch)[1:-1]


# ----------------------------------------------------------------------------------------------
# the trained model


@dataclasses.dataclass
class Trained:
    """A stage's model with a checkpoint's weights, in eval mode on the CPU, and what came with it."""

    path: Path
    model: torch.nn.Module
    block_size: int
    tokenizer: common.CharTokenizer
    step: int


def load_trained(stage: str, path: Path) -> Trained:
    """The stage's model from the checkpoint at path; a missing, damaged or foreign file is one clear error."""
    ckpt = harness.checkpoints.load(path, stage)
    module = tools.stages.load_stage(stage)
    fields = {f.name for f in dataclasses.fields(module.Config)}
    config = module.Config(**{k: v for k, v in ckpt.config.items() if k in fields})
    model = module.LanguageModel(len(ckpt.vocab), config)
    harness.checkpoints.load_weights(model, ckpt, path, config)
    model.eval()  # no dropout, as when generating
    return Trained(path, model, config.block_size, common.CharTokenizer(ckpt.vocab), ckpt.step)


def model_input(prompt: str, trained: Trained) -> tuple[str, str | None]:
    """The characters the model reads for prompt, and a note when that is not the prompt as typed.

    As the stages' generate: an empty prompt starts from a newline, and a prompt longer than
    block_size is cropped to its last block_size characters (the position table has no more rows).
    """
    if not prompt:
        start = harness.training.empty_prompt(trained.tokenizer)
        return start, "the prompt is empty: the model reads a newline, where the stages' generate starts"
    if len(prompt) > trained.block_size:
        return prompt[-trained.block_size :], (
            f"the prompt has {len(prompt)} characters, more than block_size {trained.block_size}: "
            f"the model reads only its last {trained.block_size}, as generate does"
        )
    return prompt, None


# ----------------------------------------------------------------------------------------------
# capturing the attention from the outside


@dataclasses.dataclass
class HeadAttention:
    """One attention module's work in one forward pass over T characters (batch of one)."""

    learned: bool  # False for stage 03's fixed causal average
    weights: torch.Tensor  # (T, T) row t: how position t weighs positions 0..t; 0 above the diagonal
    values: torch.Tensor  # (T, hs) what each position offers: the head's value(x), or x itself for the average
    output: torch.Tensor  # (T, hs) what the module returned in the model's own forward pass


def attention_layers(model: torch.nn.Module) -> list[list[torch.nn.Module]]:
    """The model's attention modules, grouped by layer, in the order its forward pass runs them.

    An attention module is one with a causal mask, a `tril` buffer: a Head (stages 04-10), with
    query, key and value layers, or stage 03's CausalAverage, without. Heads named <layer>.heads.<j>
    belong to one MultiHeadAttention (stages 05-10), a layer; any other is a layer on its own.
    """
    layers: dict[str, list[torch.nn.Module]] = {}
    for name, module in model.named_modules():  # in the order the modules were built: the forward order here
        if "tril" in dict(module.named_buffers(recurse=False)):
            layer = name.rpartition(".heads.")[0] or name
            layers.setdefault(layer, []).append(module)
    return list(layers.values())


def head_weights(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The weights module's forward computes from its input x (B, T, C): (B, T, T), each row summing to 1.

    The same steps as Head.forward (and CausalAverage.forward), except dropout: the model is in eval mode.
    """
    length = x.shape[1]  # T
    if hasattr(module, "query"):  # a learned head: scaled dot products of queries and keys
        q, k = module.query(x), module.key(x)  # (B, T, hs) each
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, T)
    else:  # stage 03's average: every affinity 0, so softmax shares each row equally
        wei = torch.zeros(x.shape[0], length, length, device=x.device)  # (B, T, T)
    wei = wei.masked_fill(module.tril[:length, :length] == 0, float("-inf"))  # (B, T, T) the future hidden
    return torch.softmax(wei, dim=-1)  # (B, T, T)


@torch.no_grad()
def capture_attention(model: torch.nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, list[list[HeadAttention]]]:
    """Run idx (1, T) through model once: its logits (1, T, vocab) and each head's attention, [layer][head].

    A forward hook on every attention module keeps what it was given and what it returned; after
    the pass, the weights are recomputed from that input with the module's own layers. The pass
    runs in eval mode; the model is left in the mode it was in.
    """
    layers = attention_layers(model)
    seen: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}  # (input (1, T, C), output (1, T, hs))

    def keep(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen[module] = (args[0], output)

    hooks = [module.register_forward_hook(keep) for layer in layers for module in layer]
    was_training = model.training
    model.eval()  # no dropout, as when generating: the recomputed weights have none either
    try:
        logits, _ = model(idx)  # (1, T, vocab)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    captured = []
    for layer in layers:
        heads = []
        for module in layer:
            x, out = seen[module]
            values = module.value(x) if hasattr(module, "value") else x  # (1, T, hs)
            heads.append(HeadAttention(hasattr(module, "query"), head_weights(module, x)[0], values[0], out[0]))
        captured.append(heads)
    return logits, captured


# ----------------------------------------------------------------------------------------------
# the next character's odds


def next_char_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """(1, T, vocab) logits -> (vocab,): the distribution the stages' generate draws the next character from."""
    last = logits[:, -1, :]  # (1, vocab) only the last position predicts the next character
    return torch.softmax(common.adjust_logits(last, temperature, top_k), dim=-1)[0]  # (vocab,)


def bar(p: float) -> str:
    """A bar BAR_WIDTH characters long at probability 1, drawn to an eighth of a character."""
    eighths = round(p * BAR_WIDTH * 8)
    return "█" * (eighths // 8) + EIGHTHS[eighths % 8].strip()


def probability(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 or p == 0 else "<.001"  # not "0.000" for a character that can still be drawn


def format_odds(
    probs: torch.Tensor, tokenizer: common.CharTokenizer, k: int, temperature: float, top_k: int | None
) -> str:
    """The k likeliest next characters as lines with bars, then what the rest of the vocabulary holds."""
    top, ids = torch.topk(probs, min(k, probs.numel()))  # likeliest first
    shown = [(i, p) for i, p in zip(ids.tolist(), top.tolist(), strict=True) if p > 0]  # those cut by top_k left out
    sampling = f"temperature {temperature:g}" + (f", top_k {top_k}" if top_k else "")
    lines = [f"the next character ({sampling}): the {len(shown)} likeliest of {tokenizer.vocab_size}"]
    lines += [f"  {visible(tokenizer.chars[i]):>2}  {probability(p)}  {bar(p)}" for i, p in shown]
    possible = int((probs > 0).sum())  # characters that can still be drawn
    if possible > len(shown):
        rest = 1.0 - sum(p for _, p in shown)
        lines.append(f"  the other {possible - len(shown)}: {probability(max(rest, 0.0))} in all")
    if possible < tokenizer.vocab_size:
        # top_k leaves k (more on a tie); fewer means the rest underflowed to 0 at a low temperature
        cut = f"top_k {top_k}" if top_k and possible >= top_k else "the low temperature"
        lines.append(f"  the remaining {tokenizer.vocab_size - possible}: probability 0 ({cut} leaves them out)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the attention in the terminal


def head_label(layer: int, head: int, attention: HeadAttention) -> str:
    return f"layer {layer + 1}, head {head + 1}" if attention.learned else "the fixed causal average"


def check_layers(chosen: list[int] | None, count: int) -> list[int]:
    """--layers as indices from 0: the numbers the maps show (1 to count), or from the end (-1 the last)."""
    for n in chosen or []:
        if not (1 <= n <= count or -count <= n <= -1):
            raise harness.UserError(
                f"--layers {n}: the model has {count} layer(s) of attention, 1 to {count} (or {-count} to -1 "
                "from the end)"
            )
    if not chosen:
        return list(range(count))
    return list(dict.fromkeys(n - 1 if n > 0 else n % count for n in chosen))  # "4 -1" of 4 layers: one


def check_positions(positions: list[int], length: int) -> list[int]:
    """--positions as indices from 0 (negative ones count from the end, -1 the last); each one checked."""
    for p in positions:
        if not -length <= p < length:
            raise harness.UserError(
                f"--positions {p}: the model reads {length} character(s), positions 0 to {length - 1} "
                f"(or {-length} to -1 from the end)"
            )
    return list(dict.fromkeys(p % length for p in positions))  # "-1 5" for 6 characters is one position


def format_text_view(text: str, layers: dict[int, list[HeadAttention]], positions: list[int]) -> str:
    """For each position, the TOP_WEIGHTS positions that each head weighs most, with their weights.
    layers: the heads of each layer shown, by the layer's index in the model."""
    lines = []
    for t in positions:
        last = " (the last: its output predicts the next character)" if t == len(text) - 1 else ""
        lines.append(f"position {t} '{visible(text[t])}'{last} weighs most:")
        for li, layer in layers.items():
            for hi, head in enumerate(layer):
                row = head.weights[t, : t + 1].tolist()  # positions 0..t; the rest is the masked future
                # heaviest first; among equal weights (stage 03) the nearest first
                top = sorted(range(t + 1), key=lambda s: (-row[s], -s))[:TOP_WEIGHTS]
                picks = "   ".join(f"{s} '{visible(text[s])}' {row[s]:.2f}" for s in top)
                lines.append(f"  {head_label(li, hi, head) + ':':<26}{picks}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the attention as a picture


def draw_maps(text: str, layers: dict[int, list[HeadAttention]], title: str, out: Path) -> Path:
    """Every head's T x T weights as one grid of heat maps (rows layers, columns heads), written to out.
    layers: the heads of each layer shown, by the layer's index in the model."""
    rows, cols, length = len(layers), max(map(len, layers.values())), len(text)  # length: T
    cell = min(4.0, max(2.4, 0.09 * length))  # inches per map: the labels need room as T grows
    # at least 6 inches wide, so that one map (stages 03, 04) still has room for the title
    fig = plot.new_figure(figsize=(max(6.0, cols * cell + 1.0), rows * cell + 0.7), dpi=100)
    import matplotlib  # after new_figure, which says how to install it when it is missing

    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)  # inner maps drop their tick labels
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")  # the masked future in grey, not as weight 0
    future = np.triu(np.ones((length, length), dtype=bool), k=1)  # (T, T) above the diagonal
    ticks = list(range(0, length, math.ceil(length / 48)))  # every character up to 48 of them, then every n-th
    labels = [visible(text[i]) for i in ticks]
    fontsize = 9 if length <= 20 else 8 if length <= 32 else 6  # 9 points: 12 pixels at 100 dpi
    image = None
    for row, (li, layer) in zip(axes, layers.items(), strict=True):
        for hi, ax in enumerate(row):
            if hi >= len(layer):
                ax.set_axis_off()
                continue
            head = layer[hi]
            weights = np.ma.masked_array(head.weights.numpy(), future)  # (T, T)
            image = ax.imshow(weights, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(head_label(li, hi, head), fontsize=10)
            ax.set_xticks(ticks, labels, fontsize=fontsize)
            ax.set_yticks(ticks, labels, fontsize=fontsize)
            ax.tick_params(length=0)
    for ax in axes[-1]:
        ax.set_xlabel("the position read", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("the position reading", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=min(0.8, 2.5 / rows), label="attention weight (each row sums to 1)")
    fig.suptitle(title)
    return plot.save_figure(fig, out)


# ----------------------------------------------------------------------------------------------
# the command line


def build_parser() -> argparse.ArgumentParser:
    parser = harness.cli.Parser(
        prog="python tools/attention.py",
        description="Run a prompt through a trained stage and show what each attention head weighs "
        "(a PNG grid with matplotlib, text without it) and the likeliest next characters. "
        "For the PNG: pip install matplotlib (or pip install -r requirements-dev.txt).",
        formatter_class=harness.cli.HelpFormatter,
        allow_abbrev=False,
    )
    # optional to argparse, so that a stage missing after --positions (which takes every number after
    # it) is told what happened, not only that it is missing
    parser.add_argument(
        "stage", metavar="STAGE", nargs="?", help='a stage number ("10", "04") or name ("10_gpt", "gpt")'
    )
    parser.add_argument(
        "--prompt",
        default="",
        metavar="TEXT",
        help="the text to read (default: a newline, where the stages' generate starts)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, metavar="PATH", help="the trained model (default: checkpoints/<stage>.pt)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PNG",
        help="the picture of the attention maps (default: beside the checkpoint, <stage>.attention.png)",
    )
    parser.add_argument(
        "--text",
        action="store_true",
        help="show the attention in the terminal instead of drawing it (the view without matplotlib)",
    )
    parser.add_argument(
        "--positions",
        type=int,
        nargs="+",
        metavar="INT",
        help="the positions the text view shows, from 0, or from the end with -1 (default: -1, the last; "
        "implies --text)",
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        metavar="INT",
        help="the layers to show, numbered from 1 as the maps label them, or from the end with -1 (default: all)",
    )
    parser.add_argument(
        "--odds",
        type=harness.cli.positive(int),
        default=10,
        metavar="INT",
        help="how many of the likeliest next characters to list",
    )
    parser.add_argument(
        "--temperature",
        type=harness.cli.positive(float),
        default=1.0,
        metavar="FLOAT",
        help="as in the stages: below 1 sharpens the odds, above 1 flattens them",
    )
    parser.add_argument(
        "--top_k",
        type=harness.cli.positive(int),
        metavar="INT",
        help="as in the stages: only the k likeliest characters keep a probability (default: all)",
    )
    return parser


def attention_main(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    if args.stage is None:
        took = (
            f": --positions took every number after it ({' '.join(map(str, args.positions))})" if args.positions else ""
        )
        raise harness.UserError(
            f"no stage given{took}; name the stage first, as in python tools/attention.py 10 --positions 0 -1"
        )
    if isinstance(sys.stdout, io.TextIOWrapper):  # ⏎, ␣ and █ on a terminal that cannot show them: escapes, not a crash
        sys.stdout.reconfigure(errors="backslashreplace")
    stage = tools.stages.resolve_stage(args.stage)
    trained = load_trained(stage, args.checkpoint or harness.checkpoints.default_path(stage))
    harness.cli.check_sampling_flags(args, trained.tokenizer)  # the stages' errors for --prompt and --top_k
    text, note = model_input(args.prompt, trained)
    positions = check_positions(args.positions or [-1], len(text))

    idx = torch.tensor([trained.tokenizer.encode(text)])  # (1, T)
    logits, layers = capture_attention(trained.model, idx)
    print(f"{stage}, step {trained.step} ({trained.path}): reads {''.join(map(visible, text))}")
    if note:
        print(note)
    chosen = check_layers(args.layers, len(layers)) if layers else []
    shown = {i: layers[i] for i in chosen}
    if not shown:
        print(f"{stage} has no attention: each position sees only itself (tokens first talk in 03_causal_average)")
    elif args.text or args.positions or not plot.have_matplotlib():
        if not (args.text or args.positions):
            print(f"the attention as text, as matplotlib is not installed ({plot.MATPLOTLIB_HINT})")
        print(format_text_view(text, shown, positions))
    else:
        out = args.out or trained.path.with_suffix(".attention.png")
        title = f"{stage}: attention over “{''.join(map(visible, text))}”"
        print(f"attention maps: {draw_maps(text, shown, title, out)}")
    probs = next_char_probs(logits, args.temperature, args.top_k)
    print(format_odds(probs, trained.tokenizer, args.odds, args.temperature, args.top_k))


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(attention_main, argv)


if __name__ == "__main__":
    sys.exit(main())
