"""The pipeline's skeleton: the config (`config`, `config_section`), the stage table that declares
every stage (`stage_table`), the plan that fingerprints every output from the config alone (`plan`),
what a stage's computation receives and returns (`stage_context`), every table's schema
(`schemas`) and derived seeds (`seeds`)."""
