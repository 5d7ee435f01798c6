"""Results as plain data, shared by every stage and the report: the types of results.json (`schema`), reading
(`load`) and writing it and the CSV files (`files`), the per-tensor statistic names (`layer_columns`).

Imports nothing of the stages (only `errors` and `resources`).
"""
