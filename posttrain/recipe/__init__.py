"""Recipe schema, stage graph, run directory, cache keys, resume and lock. Knows no torch."""
from posttrain.recipe.load import load_recipe, plan_recipe
from posttrain.recipe.plan import InputRef, Plan, PlannedStage
from posttrain.recipe.rundir import RunDirError, RunLockedError
from posttrain.recipe.runner import RunSummary, StageFailedError, run_recipe
from posttrain.recipe.schema import RecipeError

__all__ = [
    "InputRef", "Plan", "PlannedStage", "RecipeError", "RunDirError", "RunLockedError", "RunSummary", "StageFailedError",
    "load_recipe", "plan_recipe", "run_recipe",
]
