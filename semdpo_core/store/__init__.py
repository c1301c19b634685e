"""The content-addressed artifact store: datasets of Parquet parts with a manifest written last
(`artifact_store`), on a local directory or S3 (`backends`), what `semdpo gc` may remove (`gc`) and
what `semdpo status` shows (`status`)."""
