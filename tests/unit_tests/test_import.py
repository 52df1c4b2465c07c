import importlib


def test_packages_import() -> None:
    for name in ("pastalib", "langchain_pasta"):
        assert importlib.import_module(name).__doc__
