"""Every form widget bound once to its preset key, built from the schema's metadata (engine.config.fields.iter_fields).

    form = Form()
    with gr.Tab("Training"):
        form.section("training")              # basic fields, then an "Advanced" accordion
    preset = form.to_preset(values)           # values: the dict Gradio passes for inputs=form.inputs()
    updates = form.updates_from_preset(preset)

A widget holds the value in the form a person edits it (a list of prompts is one per line, optimizer parameters
are YAML lines); `to_widget` and `from_widget` convert one key each way, so form -> preset -> form is lossless.
Torch-free: imports only gradio, yaml and the torch-free parts of the engine.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import gradio as gr
import yaml

from engine.config.fields import get_value, iter_fields
from engine.config.load import ConfigError, preset_from_dict
from engine.config.schema import CURRENT_VERSION, Preset

# Keys a person never edits in the form (the format version is stamped on save).
UNBOUND = ("version",)
_LIST_OF_NUMBERS = ("sampling.strengths",)
# Labels where the key's last word alone would be cryptic on screen (the key itself is in every info line).
LABELS = {"lr": "Learning rate", "params": "Parameters", "enabled": "EMA of the weights", "decay": "EMA decay",
          "te_two_phase": "Two-phase text encoder", "te_lr_ratio": "Text-encoder LR ratio",
          "te_phase_fraction": "Text-encoder phase fraction", "grad_accum": "Gradient accumulation",
          "dir": "Runs folder", "path": "Path", "reg_path": "Regularization folder", "use_reg": "Use regularization "
          "images", "reg_weight": "Regularization loss weight", "reg_repeats": "Regularization repeats",
          "min_snr_gamma": "Min-SNR gamma", "vae_path": "VAE path", "init_from": "Continue from LoRA",
          "caption_ext": "Caption extension", "save_every_n_steps": "Save every N steps",
          "save_every_n_minutes": "Save every N minutes", "save_every_n_epochs": "Save every N epochs",
          "every_n_steps": "Sample every N steps", "steps": "Sampling steps", "width_px": "Width",
          "height_px": "Height", "rank": "Rank (dim)", "lr_decay_steps": "LR decay steps", "kl_beta": "KL beta",
          "ddim_eta": "DDIM eta", "reward_server_url": "Reward server URL",
          "num_images_per_prompt": "Images per prompt", "clip_l_path": "CLIP-L path"}
SECTION_LABELS = {("optimizers", "type"): "Optimizer", ("schedules", "type"): "LR schedule",
                  ("network", "type"): "Network type", ("model", "path"): "Base model (folder, file or Hub id)",
                  ("model", "preview_path"): "Preview model (folder, file or Hub id)",
                  ("dataset", "path"): "Dataset folder", ("sampling", "seed"): "Sample seed",
                  ("sampling", "steps"): "Sampling steps"}


@dataclass(frozen=True)
class FieldSpec:
    """One preset key with the schema's metadata, in the words the widget needs."""

    key: str
    kind: str            # str | int | float | optional_float | bool | choice | multi_choice | lines | numbers | mapping
    default: object
    meta: dict

    @property
    def label(self) -> str:
        parts = self.key.split(".")
        last = parts[-1]
        words = SECTION_LABELS.get((parts[0], last)) or LABELS.get(last) or last.replace("_px", "").replace("_", " ")
        unit = self.meta.get("unit")
        shown_unit = f" ({unit})" if unit and unit not in words.lower() and unit != "steps" else ""
        return f"{words[:1].upper()}{words[1:]}" + shown_unit

    @property
    def help(self) -> str:
        """The schema's help in screen words: other keys named by their labels, the range appended."""
        lo, hi = self.meta.get("min"), self.meta.get("max")
        bounds = f" Range {lo:g}–{hi:g}." if lo is not None and hi is not None and hi < 1e6 else ""
        return humanize(self.meta.get("help", ""), self.key) + bounds

    @property
    def info(self) -> str:
        """The line under the widget: the help, then the YAML key as a small code tag (Gradio renders `x` as code),
        for those who edit presets by hand."""
        return info_line(self.help, self.key)

    @property
    def advanced(self) -> bool:
        return bool(self.meta.get("advanced"))


def info_line(text: str, key: str) -> str:
    return f"{text} `{key}`"


_KEY_WORD = re.compile(r"(?<![\w.`'])([a-z][a-z0-9]*(?:[._][a-z0-9]+)+)(?![\w`])")  # 'quoted' values stay


@functools.cache
def _unique_last_parts() -> dict[str, str]:
    """'te_lr_ratio' -> 'network.te_lr_ratio': the bare names that belong to exactly one key."""
    keys: dict[str, list[str]] = {}
    for key in _specs():
        keys.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    return {last: found[0] for last, found in keys.items() if len(found) == 1 and "_" in last}


def humanize(text: str, own_key: str, name_own: bool = False) -> str:
    """Help text that names another preset key by its YAML name ('te_lr_ratio', 'training.batch_size') names it by
    its label instead ("Text-encoder LR ratio"). A bare name counts inside the key's own section, or where it names
    one key only; the key's own name (unless name_own), choice values and the guides' flag names stay as written."""
    specs = all_specs()
    section = own_key.split(".")[0]
    prefix = own_key.rsplit(".", 1)[0]

    def label_of(word: str) -> str | None:
        if word in specs and (word != own_key or name_own):
            return specs[word].label
        for candidate in (f"{prefix}.{word}", f"{section}.{word}", _unique_last_parts().get(word)):
            if candidate in specs and (candidate != own_key or name_own):
                return specs[candidate].label
        return None

    return _KEY_WORD.sub(lambda m: f"“{label_of(m.group(1))}”" if label_of(m.group(1)) else m.group(1), text)


def _kind(key: str, field) -> str:
    type_name, meta = str(field.type), field.metadata
    if type_name == "bool":
        return "bool"
    if type_name == "list":
        if meta.get("choices"):
            return "multi_choice"
        return "numbers" if key in _LIST_OF_NUMBERS else "lines"
    if type_name == "dict":
        return "mapping"
    if "Optional" in type_name:
        return "optional_float"
    if meta.get("choices"):
        return "choice"
    return type_name  # str | int | float


@functools.cache
def _specs() -> dict[str, FieldSpec]:
    fresh = Preset()
    return {key: FieldSpec(key, _kind(key, f), get_value(fresh, key), dict(f.metadata))
            for key, f in iter_fields() if key not in UNBOUND}


def all_specs() -> dict[str, FieldSpec]:
    """key -> FieldSpec for every key the form binds, in schema order. The default is the value in a new Preset
    (optimizer parameters are filled in there, not in the field's own default)."""
    return dict(_specs())


# --- value conversion: preset value <-> widget value ----------------------------------------------------------------
def to_widget(spec: FieldSpec, value):
    if spec.kind == "lines":
        return "\n".join(str(v) for v in value)
    if spec.kind == "numbers":
        return ", ".join(f"{v:g}" if isinstance(v, float) and abs(v) < 1e6 else str(v) for v in value)
    if spec.kind == "mapping":
        return yaml.safe_dump(value, sort_keys=False, default_flow_style=None).strip() if value else ""
    if spec.kind == "optional_float":
        return "" if value is None else repr(float(value))
    return value


def from_widget(spec: FieldSpec, value):
    """The widget's value as preset data; bad text is passed on as text so the loader names the key."""
    if spec.kind == "lines":
        return [line.strip() for line in (value or "").splitlines() if line.strip()]
    if spec.kind == "numbers":
        return [v for v in re.split(r"[,\s]+", (value or "").strip()) if v]
    if spec.kind == "mapping":
        return _parse_mapping(value)
    if spec.kind == "optional_float":
        return None if value is None or not str(value).strip() else str(value).strip()
    if spec.kind in ("int", "float") and value is None:
        return ""  # an emptied number box: "'' is not a number" names the key
    if spec.kind == "str":
        return "" if value is None else str(value)
    return value


def _parse_mapping(text):
    if not (text or "").strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return f"not valid YAML ({str(exc).splitlines()[0]})"
    return data if isinstance(data, dict) else text


def nest(flat: dict[str, object]) -> dict:
    """{'a.b': 1} -> {'a': {'b': 1}}; a `params` mapping stays a nested mapping (the loader accepts it)."""
    out: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


# --- widgets -----------------------------------------------------------------------------------------------------------
def make_widget(spec: FieldSpec, value=None):
    """A Gradio component for one key (created in the current Blocks context)."""
    value = to_widget(spec, spec.default if value is None else value)
    common = {"label": spec.label, "info": spec.info, "elem_id": widget_elem_id(spec.key)}
    meta = spec.meta
    if spec.kind == "bool":
        return gr.Checkbox(value=value, **common)
    labelled = [(meta.get("choice_labels", {}).get(c, c), c) for c in meta.get("choices") or ()]
    if spec.kind == "choice":
        return gr.Dropdown(choices=labelled, value=value, **common)
    if spec.kind == "multi_choice":
        return gr.Dropdown(choices=labelled, value=value, multiselect=True, **common)
    if spec.kind == "optional_float":  # a Number box cannot be empty in the browser: it would send 0
        return gr.Textbox(value=value, placeholder="empty = automatic", **common)
    if spec.kind in ("int", "float"):
        # No minimum/maximum on the widget: Gradio would reject an out-of-range number before any handler runs,
        # with a message that does not name the key. The range is in the info line; engine.config.convert checks it.
        return gr.Number(value=value, precision=0 if spec.kind == "int" else None, **common)
    if spec.kind == "lines":
        return gr.Textbox(value=value, lines=3, max_lines=12, placeholder="one per line", **common)
    if spec.kind == "mapping":
        return gr.Textbox(value=value, lines=3, max_lines=10, placeholder="name: value, one per line", **common)
    return gr.Textbox(value=value, **common)


def widget_elem_id(key: str) -> str:
    """A stable DOM id per key (browser tests and CSS find widgets by it)."""
    return "f-" + key.replace(".", "-").replace("_", "-")


class Form:
    """The registry: preset key -> widget, each bound exactly once."""

    def __init__(self):
        self.specs = all_specs()
        self.widgets: dict[str, gr.components.Component] = {}
        self.accordion_of: dict[str, gr.Accordion] = {}  # key -> the Advanced accordion that hides it

    def widget(self, key: str) -> gr.components.Component:
        if key in self.widgets:
            raise ValueError(f"{key} is already bound to a widget; each key is bound once")
        self.widgets[key] = make_widget(self.specs[key])
        return self.widgets[key]

    def keys_under(self, prefix: str) -> list[str]:
        return [k for k in self.specs if k == prefix or k.startswith(prefix + ".")]

    def section(self, prefix: str, skip=(), advanced_label="Advanced"):
        """Bind every key under `prefix` not yet bound: basic ones here, advanced ones in a closed accordion."""
        keys = [k for k in self.keys_under(prefix) if k not in self.widgets and k not in skip]
        basic = [k for k in keys if not self.specs[k].advanced]
        advanced = [k for k in keys if self.specs[k].advanced]
        self.grid(basic)
        if advanced:
            with gr.Accordion(advanced_label, open=False) as acc:
                self.grid(advanced)
            for key in advanced:
                self.accordion_of[key] = acc

    def grid(self, keys, columns: int = 2):
        """Bind keys two to a row; long text (lists, mappings) gets a row of its own."""
        row: list[str] = []
        for key in keys:
            if self.specs[key].kind in ("lines", "mapping"):
                self._row(row, columns)
                row = []
                self.widget(key)
                continue
            row.append(key)
            if len(row) == columns:
                self._row(row, columns)
                row = []
        self._row(row, columns)

    def _row(self, keys, columns):
        if keys:
            with gr.Row(equal_height=False):
                for key in keys:
                    with gr.Column(min_width=220):
                        self.widget(key)
                for _ in range(columns - len(keys)):
                    gr.Column(min_width=220)

    def unbound(self) -> list[str]:
        return [k for k in self.specs if k not in self.widgets]

    # --- the form as data ---
    def inputs(self) -> set:
        return set(self.widgets.values())

    def components(self) -> list:
        return list(self.widgets.values())

    def to_data(self, values: dict) -> dict:
        """Gradio's {component: value} -> nested preset data (not yet validated)."""
        flat = {key: from_widget(self.specs[key], values[w]) for key, w in self.widgets.items() if w in values}
        return {"version": CURRENT_VERSION, **nest(flat)}

    def to_preset(self, values: dict) -> Preset:
        """Raises ConfigError with (key, message) problems, exactly as the engine would."""
        return preset_from_dict(self.to_data(values))

    def updates_from_preset(self, preset: Preset) -> dict:
        return {w: to_widget(self.specs[k], get_value(preset, k)) for k, w in self.widgets.items()}

    def _by_key(self, problems) -> dict[str, list[str]]:
        by_key: dict[str, list[str]] = {}
        for problem_key, message in problems:
            key = self.key_of_problem(problem_key)
            if key:
                by_key.setdefault(key, []).append(problem_words(message, problem_key))
        return by_key

    def key_of_problem(self, problem_key: str) -> str | None:
        """The bound key a ConfigError problem belongs to (`optimizers.unet.betas` -> `optimizers.unet.params`)."""
        key = re.sub(r"\[\d+\]$", "", problem_key or "")
        if key in self.widgets:
            return key
        for prefix in ("optimizers", "schedules"):
            parts = key.split(".")
            if parts[0] == prefix and len(parts) >= 3 and f"{prefix}.{parts[1]}.params" in self.widgets:
                return f"{prefix}.{parts[1]}.params"
        return None

    def problem_updates(self, problems: list[tuple[str, str]], values: dict | None = None,
                        advice: list[tuple[str, str]] = ()) -> dict:
        """Each widget's info line: its help, its problem in red words, or advice (valid, but rarely meant) in amber;
        advanced accordions with a problem open. `values` ({widget: value}) are merged in: one update per widget
        may set both (a second would replace it)."""
        values = values or {}
        by_key, advised = self._by_key(problems), self._by_key(advice)
        updates = {}
        for key, w in self.widgets.items():
            text, classes = self.specs[key].info, []
            if key in by_key:
                text, classes = info_line("⚠ " + " · ".join(by_key[key]), key), ["has-problem"]
            elif key in advised:
                text, classes = info_line("Note: " + " · ".join(advised[key]), key), ["has-advice"]
            extra = {"value": values[w]} if w in values else {}
            updates[w] = gr.update(info=text, elem_classes=classes, **extra)
        for key in by_key:
            if key in self.accordion_of:
                updates[self.accordion_of[key]] = gr.update(open=True)
        return updates


def problems_of(exc: Exception) -> list[tuple[str, str]]:
    return exc.problems if isinstance(exc, ConfigError) else [("", str(exc))]


def problem_words(message: str, key: str) -> str:
    """A loader message in screen words: without its leading key ("training.max_steps: must be ..." -> "must be
    ..."), and keys inside it by their labels ("set “Max steps” or “Max epochs”")."""
    for prefix in (f"{key}: ", f"{key} "):
        if key and message.startswith(prefix):
            message = message[len(prefix):]
            break
    return humanize(message, key, name_own=True)


def format_problems(problems: list[tuple[str, str]], form: "Form | None" = None) -> str:
    """Markdown list of problems, each by the field's label (when `form` binds it) with its YAML key as a tag."""
    lines = []
    for key, message in problems:
        bound = form.key_of_problem(key) if form is not None and key else None
        name = form.specs[bound].label if bound else (key or "preset")
        tag = f" `{key}`" if bound else ""
        lines.append(f"- **{name}**{tag}: {problem_words(message, key)}")
    return "\n".join(lines)
