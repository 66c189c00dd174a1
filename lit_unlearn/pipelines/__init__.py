"""The pipeline layer: :mod:`lit_unlearn.pipelines.runner` runs any declared list of stages (run folders, reuse and
resume, the recipe's values with one precedence, a method's prerequisite stage, the guard floor, the summary
tables, exit codes); a pipeline is a declaration of its stages and columns (``lit_unlearn.tofu``)."""
