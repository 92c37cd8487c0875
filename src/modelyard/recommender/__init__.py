"""MovieLens recommender: a matrix-factorisation reference project.

    from modelyard.recommender import run, load_recommender
    run(source="ml-latest-small.zip", epochs=2)
    load_recommender("staging").recommend(50, top_k=10)
"""

from modelyard.recommender.infer import Recommender, load_recommender
from modelyard.recommender.pipeline import run

__all__ = ["Recommender", "load_recommender", "run"]
