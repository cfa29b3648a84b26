package replication

// ReceiveWake lets tests stretch how long a receive waits.
var ReceiveWake = &receiveWake
