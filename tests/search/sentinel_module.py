"""A module a malicious study body names: the service must refuse it without importing it
(the tests check it never appears in sys.modules)."""


def make_model(num_classes: int, input_shape: tuple[int, ...]):
    raise AssertionError("imported and called on a client's say-so")


def make_data():
    raise AssertionError("imported and called on a client's say-so")
