"""Studies: grids of ordinary pipeline runs (seeds x doses x arms) summarised across seeds
(`semdpo study SPEC`). `spec` reads the grid, `plan` fingerprints it from its runs, `measure` reads
each run's endpoints from the store, `seed_statistics` compares arms across seeds, and
`study_report` writes the tables and the figure."""
