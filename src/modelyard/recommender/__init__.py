"""MovieLens recommender: a matrix-factorisation reference project.

    from modelyard.recommender import run, load_recommender
    run(source="ml-latest-small.zip", epochs=2)
    load_recommender("staging").recommend(50, top_k=10)
"""

__all__ = ["Recommender", "load_recommender", "run"]


def __getattr__(name):  # lazy: importing the data functions must not load torch and MLflow
    if name in ("Recommender", "load_recommender"):
        from modelyard.recommender import infer

        return getattr(infer, name)
    if name == "run":
        from modelyard.recommender.pipeline import run

        return run
    raise AttributeError(name)
