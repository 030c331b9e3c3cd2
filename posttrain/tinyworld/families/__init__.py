"""One module per task family; each exposes `FAMILY` (generate_prompts, reference_solution, grade, corrupt)."""
