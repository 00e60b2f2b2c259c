"""The state the gateway and the workers share, in Redis and on the data volume: the model registry,
enrolment job records and the queue, the lineage lock, the sample store and how uploads enter it.

Both sides import this package; neither imports the other's (service/ is HTTP only, workers/ is what
runs in a worker process). Nothing here imports service/ or workers/.
"""
