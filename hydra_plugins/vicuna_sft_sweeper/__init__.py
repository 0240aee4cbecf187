"""vicuna_sft's Optuna sweeper (`hydra/sweeper=optuna`), where Hydra discovers and accepts sweeper
classes (only under the `hydra_plugins` namespace): hydra-optuna-sweeper's own, with failed trials
unable to end the sweep before its summary. The logic and the config: vicuna_sft/launch/sweep.py."""

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # hydra-optuna-sweeper not installed: nothing to offer
    pass
else:
    from vicuna_sft.launch.sweep import SearchSurvivesFailedTrials

    class OptunaSearch(SearchSurvivesFailedTrials, OptunaSweeper):
        pass
