"""Text as the commands print it: DataFrames as aligned text, name/value pairs, bytes per mask, record values,
and the words that describe an interpolation path."""

from __future__ import annotations

import argparse

from masklab.units import missing, percent


def frame_text(frame) -> str:
    """A DataFrame as plain aligned text (floats with 4 decimals, no index)."""
    return frame.to_string(index=False, float_format=lambda x: f"{x:.4f}")


def pairs_text(frame) -> str:
    """A two-column (name, value) DataFrame as lines "name  value": names right-aligned, values left-aligned
    (long values stay readable; `to_string` would pad every one to the longest)."""
    names = [str(v) for v in frame.iloc[:, 0]]
    width = max((len(n) for n in names), default=0)
    return "\n".join(f"{n:>{width}}  {v}" for n, v in zip(names, frame.iloc[:, 1]))


def bytes_text(run, size: dict | None = None) -> str:
    """Bytes on disk per mask as `generate` and `show` print them (`Run.bytes_per_mask`, or `size` when the
    caller has it already)."""
    size = size or run.bytes_per_mask()
    text = f"{size['mask file']:,.0f} bytes per mask file"
    extras = size["mask with its extras"]
    return text + (f", {extras:,.0f} per mask with its record and extras" if extras == extras else "")


def value_text(key: str, value) -> str:
    """A record or summary value as `show` prints it: accuracies in %, other floats with 4 decimals, a missing
    value "n/a" (as `percent` writes a missing accuracy)."""
    if missing(value):
        return "n/a"
    if isinstance(value, float):
        return percent(value) if "acc" in key else f"{value:.4f}"
    return str(value)


def differs(value, default) -> bool:
    return not (value == default or (value is None and default is None))


def path_words(args: argparse.Namespace) -> str:
    """"soft path, 30 points" / "hamming path in 3 random bit orders, 30 points" / "hamming path in score order"."""
    if args.path != "hamming":
        how = f"{args.path} path"
    elif args.order == "score":
        how = "hamming path in score order"
    else:
        how = f"hamming path in {args.orders} random bit order{'s' if args.orders > 1 else ''}"
    return f"{how}, {args.points} points"


def order_words(table, args: argparse.Namespace):
    """The `order` column as words ("random order 0", "score order") on the hamming path."""
    if args.path != "hamming" or "order" not in table.columns:
        return table
    words = ["score order" if args.order == "score" else f"random order {int(k)}" for k in table["order"]]
    return table.assign(order=words)
