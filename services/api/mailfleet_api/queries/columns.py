"""Select lists derived from the fields of the model that a statement's rows become.

A row read this way carries exactly the model's field names, nested models included (as jsonb
objects), so ``Model.model_validate(dict(row))`` is the whole mapping: the field list is
written once, in the model, and a field added there is read without touching the SQL unless
it needs an expression of its own.
"""

from collections.abc import Mapping

from pydantic import BaseModel


def field_expressions(
    model: type[BaseModel], default: str, special: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The SQL expression of each of the model's fields, in their order.

    `default` is formatted with the field's name (``"a.{}"``); `special` gives the fields that
    are not read that way. Naming a field the model lacks is a programming error.
    """
    special = special or {}
    unknown = special.keys() - model.model_fields.keys()
    if unknown:
        raise ValueError(f"{model.__name__} has no fields {sorted(unknown)}")
    return {name: special.get(name) or default.format(name) for name in model.model_fields}


def select_list(expressions: dict[str, str]) -> str:
    """``expression AS field, ...``: a row whose columns are the model's fields."""
    return ", ".join(f"{expression} AS {name}" for name, expression in expressions.items())


def json_object(expressions: dict[str, str]) -> str:
    """A jsonb object of the model's fields, for a nested model read in one column."""
    pairs = ", ".join(f"'{name}', {expression}" for name, expression in expressions.items())
    return f"jsonb_build_object({pairs})"
