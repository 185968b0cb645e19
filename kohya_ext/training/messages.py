"""The training log: ``say`` prints one line; the others build a line from plain values (tests/test_training_messages.py)."""

from __future__ import annotations


def say(msg: str) -> None:
    """One line in the training log. Printed, not logged: sd-scripts puts a rich handler on the
    root logger, so logging as well would show every line twice."""
    print(f"kohya-ext: {msg}", flush=True)


def reference_ready(seconds: float, info: dict, n_prompts: int, deadline: float, prompt_characters: list[str] | None) -> str:
    """The worker's reference is loaded: faces, prompts, deadline, and per character when several."""
    counts, chars = info.get("counts") or {}, info.get("characters") or {}
    return (f"consistency reference ready in {seconds:.1f} s "
            f"({counts.get('usable', '?')} usable faces of {counts.get('images', '?')} images; {n_prompts} prompts; "
            f"scoring deadline {deadline:g} s)"
            + ("" if not prompt_characters else "; characters scored against their own reference: "
               + ", ".join(f"{c} ({prompt_characters.count(c)} prompts, {chars.get(c, {}).get('usable', '?')} faces)"
                           for c in sorted(set(prompt_characters)))))


def evaluation(global_step: int, trigger: str, row: dict, memorization_max: float) -> str:
    """One scored evaluation: its score, detection rate, new best, or memorised (never crowned)."""
    return (f"step {global_step} ({trigger}): consistency {row['score']:.4f}, detection {100 * row['detection_rate']:.0f}%"
            + (" - new best" if row["is_best"] else "")
            + (f" (memorised: {100 * row['memorization']:.0f}% near-copies of training images > {100 * memorization_max:.0f}%: "
               "not crowned best)" if row.get("memorized") else ""))


def measured(row: dict) -> str:
    """What an evaluation measured, in words: its consistency score, or its validation loss."""
    return f"consistency {row['score']:.4f}" if row.get("score") is not None else f"validation loss {row['val_loss']:.4f}"


def fit_end(rows: list[dict], best: dict | None, best_file: dict, stop_message: str | None, write_errors: dict[str, str]) -> str:
    """The run's last line: the best evaluation and which file holds it (a failed copy said as such), how many
    evaluations, why it stopped early, and every file kohya-ext could not write."""
    n_ok = sum(1 for r in rows if r.get("status") == "ok")
    counts = f"{len(rows)} evaluation(s): {n_ok} scored, {len(rows) - n_ok} failed"
    if best is None:
        line = f"no best checkpoint: {counts}"
    else:
        held = best_file.get("holds") or {}
        where = best.get("checkpoint") or "no kohya file"
        if held.get("eval") == best.get("eval"):
            where = f"{where} -> {best_file['file']}"
        else:
            was = f"{best_file['file']} holds cumulative step {held['cum_step']}" if held else f"{best_file['file']} was not written"
            why = best_file.get("error") or (f"waiting for {best_file['pending']}" if best_file.get("pending") else "not copied")
            where = f"{where}; copying it failed ({why}): {was}"
        if best.get("checkpoint_overwritten"):
            where += f"; {best.get('checkpoint')} was overwritten {best['checkpoint_overwritten']}"
        line = (f"best {measured(best)} at step {best['kohya_step']} (cumulative {best['cum_step']}, "
                f"epoch {best['epoch']}, {where}); {counts}")
    return (line + (f"; stopped early: {stop_message}" if stop_message is not None else "")
            + ("".join(f"; NOT WRITTEN: {name} ({err})" for name, err in write_errors.items())))


def resumed(kept: list[dict], abandoned: list[dict], best: dict | None, wait: int | None) -> str:
    """What a resume kept; ``wait``: evaluations without improvement (None without early stopping)."""
    return (f"{len(kept)} evaluation(s) kept"
            + (f", {len(abandoned)} from the replaced continuation set aside" if abandoned else "")
            + (f"; best {measured(best)} at cumulative step {best['cum_step']}" if best else "")
            + (f"; {wait} evaluation(s) without improvement so far" if wait is not None else ""))
