"""Plans and what they act on: groups of prunable units with exact costs, selection under a budget, plan steps
(keep / factorize / sparsify), slicing and the run result; nothing here knows a model family."""
