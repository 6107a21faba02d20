"""Every field of every configuration dataclass says what it does, in one line beside it.

The YAML / command-line configs (a run config's sections, fine-tuning, the sweep, sharding, the OpenI
benchmark) and the option groups that apps/ and shard/ functions take: each field carries a trailing
`# ...` comment on its line (the house style), or a string right after it, or, where a class lists
its fields in its docstring (`name:  what it is`), that line. Read from the source with ast and
tokenize, so a field added without a word fails here, naming the class and the field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize

import pytest

from mixvlp_ds.apps.finetune import FinetuneConfig
from mixvlp_ds.apps.heads import Start
from mixvlp_ds.apps.loop import FitOptions
from mixvlp_ds.apps.openi_text import Options as OpeniTextOptions
from mixvlp_ds.apps.probe import PatientSubset
from mixvlp_ds.apps.regeneration import RegenOptions
from mixvlp_ds.data.config import DataConfig, SourceSpec
from mixvlp_ds.model.config import ModelConfig
from mixvlp_ds.programs.sweep import SweepConfig
from mixvlp_ds.shard.pipeline import ShardOptions
from mixvlp_ds.shard.sources._files import SplitRule
from mixvlp_ds.train.config import RunConfig, TrainConfig

CONFIGS = [RunConfig, ModelConfig, DataConfig, SourceSpec, TrainConfig, FinetuneConfig, SweepConfig,
           ShardOptions, OpeniTextOptions]
OPTION_GROUPS = [FitOptions, RegenOptions, PatientSubset, Start, SplitRule]


def undocumented(source: str, field_names: list[str]) -> list[str]:
    """The fields of the (first) class in `source` with no trailing comment on their lines, no string
    statement right after them and no `name:` line in the class docstring."""
    source = textwrap.dedent(source)
    commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                 if tok.type == tokenize.COMMENT and tok.line.strip() != tok.string.strip()}
    cls = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef))
    listed = set(re.findall(r"^\s*(\w+):", ast.get_docstring(cls) or "", re.MULTILINE))
    documented = set()
    for stmt, after in zip(cls.body, [*cls.body[1:], None], strict=True):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name = stmt.target.id
        on_its_lines = any(line in commented for line in range(stmt.lineno, stmt.end_lineno + 1))
        string_after = (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                        and isinstance(after.value.value, str))
        if on_its_lines or string_after or name in listed:
            documented.add(name)
    return [n for n in field_names if n not in documented]


@pytest.mark.parametrize("cls", CONFIGS + OPTION_GROUPS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_field_is_documented(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    missing = undocumented(inspect.getsource(cls), names)
    assert not missing, (f"{cls.__module__}.{cls.__name__}: fields without a one-line description "
                         f"(a trailing `# ...` comment): {missing}")


def test_the_check_finds_a_bare_field_and_accepts_the_three_forms():
    source = '''
    @dataclass
    class Example:
        """An example.

        listed:   described in the docstring
        """

        commented: int = 1          # a trailing comment
        spread: list = field(
            default_factory=list)   # a comment on the field's last line
        stringed: int = 2
        "a string right after it"
        listed: int = 3
        # a comment above a field is a section heading, not the field's description
        bare: int = 4
        also_bare: str = "# not a comment"
    '''
    names = ["commented", "spread", "stringed", "listed", "bare", "also_bare"]
    assert undocumented(source, names) == ["bare", "also_bare"]
