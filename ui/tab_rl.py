"""RL tab: the rl section (method, group size, rewards, prompts, the method's settings) and "Score these images",
which runs the chosen rewards on the dataset or on the last run's samples, so a reward server, a CLIP folder or a
reward file is known to work before a run (engine/rl/score.py). The reward plot is on the Run tab, beside the loss.
"""
from __future__ import annotations

import gradio as gr
import pandas as pd

from engine.config.load import ConfigError
from ui.fields import Form, format_problems, problems_of

SOURCES = ("the dataset", "the last run's samples")


def build(form: Form) -> dict:
    gr.Markdown("Fine-tune against a reward instead of (or after) a dataset: set **Mode** to **rl** on the Training "
                "tab. **grpo** is fast and light; **nft** (DiffusionNFT) is steadier and needs one more forward "
                "pass. `presets/rl-grpo.yaml` and `rl-nft.yaml` are the RL guide's recommended settings.")
    gr.Markdown("### Method")
    form.grid(["rl.method", "rl.warmup_steps"])
    gr.Markdown("### Rewards")
    form.grid(["rl.rewards"])
    form.grid(["rl.clip_model_path", "rl.aesthetic_model_path", "rl.reward_file", "rl.reward_server_url"])
    with gr.Row():  # right under the rewards: try them before a run
        source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Score", elem_id="rl-score-source", scale=3)
        score = gr.Button("Score these images", elem_id="rl-score", scale=1)
    result = gr.Markdown(elem_id="rl-score-result")
    table = gr.Dataframe(elem_id="rl-score-table", visible=False, interactive=False, wrap=True)
    gr.Markdown("### Rollouts")
    form.grid(["rl.prompts_file", "rl.num_images_per_prompt", "rl.num_batches_per_epoch", "rl.num_inference_steps",
               "rl.guidance_scale", "rl.timestep_fraction", "rl.num_inner_epochs", "rl.adv_clip_max",
               "rl.per_prompt_stat_tracking", "rl.kl_beta"])
    gr.Markdown("### GRPO")
    form.grid(["rl.clip_range"])
    gr.Markdown("### NFT (DiffusionNFT)")
    form.grid(["rl.nft_beta", "rl.adv_mode", "rl.decay_type"])
    form.section("rl", advanced_label="Advanced RL options")
    return {"source": source, "score": score, "result": result, "table": table}


def score_view(preset, source: str, view) -> tuple[str, pd.DataFrame | None]:
    """(the summary in words, the table) for the Score button."""
    from pathlib import Path

    from engine.failures import UserError
    from engine.rl.rewards import RewardServerDown
    from engine.rl.score import dataset_pairs, sample_pairs, score_pairs

    try:
        if source == SOURCES[1]:
            if view is None:
                return "No run yet: start one, or score the dataset.", None
            pairs = sample_pairs(view.run_dir)
        else:
            pairs = dataset_pairs(preset.dataset.path, preset.dataset.caption_ext)
        table = score_pairs(preset.rl, pairs)
    except UserError as e:
        return f"**Could not score:** {e.message}" + (f"  \n{e.hint}" if e.hint else ""), None
    except RewardServerDown as e:
        return f"**The reward server does not answer:** {e}  \nStart it, or fix *Reward server url*.", None
    rows = table["rows"]
    weights = ", ".join(f"{name} × {preset.rl.rewards[name]:g}" for name in table["names"])
    frame = pd.DataFrame([{"image": Path(r["image"]).name, "prompt": r["prompt"], "total": round(r["total"], 4),
                           **{n: round(r[n], 4) for n in table["names"]}} for r in rows])
    text = (f"Scored {len(rows)} image(s) with {weights}: mean **{table['mean']:.4g}**, spread {table['std']:.3g} "
            f"(RL learns from the spread within a group: near 0, it has nothing to learn from).")
    return text, frame


def wire(form: Form, parts: dict, run_view) -> None:
    def on_score(values):
        source, view = values.pop(parts["source"]), values.pop(run_view)
        try:
            preset = form.to_preset(values)
        except ConfigError as exc:
            return {parts["result"]: "**Fix these first:**\n" + format_problems(problems_of(exc), form),
                    parts["table"]: gr.update(visible=False)}
        text, frame = score_view(preset, source, view)
        return {parts["result"]: text,
                parts["table"]: gr.update(value=frame, visible=True) if frame is not None else gr.update(visible=False)}

    parts["score"].click(on_score, inputs={*form.inputs(), parts["source"], run_view},
                         outputs=[parts["result"], parts["table"]], api_name="score_rewards")
