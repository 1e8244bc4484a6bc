"""Prompt template sets shipped as data: the authors' per-dataset sets (templates.json of salesforce/MUST)."""
