"""WorkerPool: a Deployment of Shoal workers, scaled from the queue depth in Postgres."""
