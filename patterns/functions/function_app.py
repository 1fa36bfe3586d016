"""Competing consumers as an Azure Functions app: consumer.py's work, the host's loop.

    cd patterns/functions && func start     # Azure Functions Core Tools, with Azurite running

The Functions host does what consumer.py spells out: it polls `tasks-queue` (backing off up
to maxPollingInterval when it is empty), decodes each message from Base64, hides it while the
function runs, deletes it when the function returns, makes it visible again after
visibilityTimeout when the function raises, and after maxDequeueCount deliveries moves it to
`tasks-queue-poison`. host.json sets those to our consumer's defaults. Feed it with our
producer in base64 mode (AZURE_QUEUE_MESSAGE_ENCODING=base64), as README.md here shows. Needs the
`azure-functions` package, which the Functions host provides; this project installs it only for
its tests, which load this file with it (tests/test_functions.py).
"""

import json
import logging
import time

import azure.functions as func

app = func.FunctionApp()
WORK_SECONDS = 2.0  # consumer.py's --work-seconds default: the simulated work per task


@app.queue_trigger(arg_name="message", queue_name="tasks-queue", connection="AzureWebJobsStorage")
def consumer(message: func.QueueMessage) -> None:
    task = json.loads(message.get_body().decode("utf-8"))  # the host has decoded the Base64
    task_id = task["id"]
    logging.info(f"took {task_id} (attempt {message.dequeue_count})")
    if task.get("fail"):
        raise RuntimeError("the task asked to fail")  # raising = not deleted: it comes back
    time.sleep(WORK_SECONDS)  # the work
    logging.info(f"done {task_id}")  # returning = the host deletes the message
