from o3_cases import e3nn_modules_unscripted  # noqa: F401  (autouse fixture)
