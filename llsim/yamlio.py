"""Reading YAML for scenarios and profiles (below every layer that reads them)."""
from __future__ import annotations

from llsim.errors import LLSimError


def load_yaml(text: str, where: str):
    """``yaml.safe_load`` that also refuses a key given twice in one mapping (YAML keeps the last one
    silently) and nesting too deep to be a scenario or a profile; errors are :class:`LLSimError`."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen: dict = {}
        for k, _ in node.value:
            key = loader.construct_object(k, deep=deep)
            try:
                hash(key)
            except TypeError:  # an unhashable key: the default constructor says so
                continue
            if key in seen and key != "<<":
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", k.start_mark)
            seen[key] = k.start_mark.line
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                           lambda loader, node: mapping(loader, node))
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise LLSimError(f"{where}:{' line ' + str(mark.line + 1) if mark else ''} is not valid YAML: "
                         f"{' '.join(str(getattr(e, 'problem', None) or e).split())}") from None
    except RecursionError:
        raise LLSimError(f"{where}: nested too deeply to be a scenario or a profile (they are a few levels "
                         "deep)") from None
