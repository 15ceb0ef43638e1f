-- Databases of the compose stack, created once when the postgres volume is first initialised (the image
-- runs /docker-entrypoint-initdb.d/*.sql with psql, as POSTGRES_USER, who owns what it creates):
--   streamflow          StreamFlow's tables, plus Feast's registry and online store (schema "feast")
--   streamflow_mlflow   MLflow's tracking store and model registry (StreamFlow's "<db>_mlflow" convention)
--   streamflow_prefect  the Prefect server's database
-- CREATE DATABASE has no IF NOT EXISTS and cannot run inside a DO block: \gexec runs the generated
-- statement for each name that does not exist yet, so the script is safe to run again by hand.
SELECT format('CREATE DATABASE %I', name)
FROM unnest(ARRAY['streamflow', 'streamflow_mlflow', 'streamflow_prefect']) AS name
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = name)
\gexec
