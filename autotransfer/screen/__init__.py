"""The screen: transferability scores of backbones from their pooled features, before any training.

``scores.py`` holds the estimators (NumPy, SciPy, scikit-learn); ``screen.py`` extracts the features
through the linear-probe cache and ranks the candidates.
"""
