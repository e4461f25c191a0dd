' pull.vbs SUB COUNT WAIT_MS: takes COUNT messages from the durable
' subscription SUB with Wait (one at a time) and Pull (several), echoing
' "MSG topic payload id attempt" and acknowledging each. Scripts that cannot
' take events (cscript under Wine) use exactly this. Failures end with
' WScript.Quit and a non-zero code (cscript would exit 0).
Option Explicit
On Error Resume Next

Dim name, count, waitMs, b, s, m, msgs, got, deadline
If WScript.Arguments.Count < 3 Then WScript.Echo "usage: pull.vbs SUB COUNT WAIT_MS" : WScript.Quit 1
name = WScript.Arguments(0)
count = CLng(WScript.Arguments(1))
waitMs = CLng(WScript.Arguments(2))

Set b = CreateObject("Switchboard.Broker")
If Err.Number <> 0 Then WScript.Echo "FAIL CreateObject " & Hex(Err.Number) & " " & Err.Description : WScript.Quit 2
Set s = b.Subscribe(name)
If Err.Number <> 0 Then WScript.Echo "FAIL Subscribe " & Hex(Err.Number) & " " & Err.Description : WScript.Quit 3
s.Buffer = 10

got = 0
deadline = Timer + waitMs / 1000
' The first one with Wait ...
Set m = s.Wait(waitMs)
If Err.Number <> 0 Then WScript.Echo "FAIL Wait " & Hex(Err.Number) & " " & Err.Description : WScript.Quit 4
If m Is Nothing Then WScript.Echo "FAIL nothing within " & waitMs & " ms" : WScript.Quit 5
Take m
' ... the rest with Pull.
Do While got < count And Timer < deadline
    msgs = s.Pull(10, 1000)
    If Err.Number <> 0 Then WScript.Echo "FAIL Pull " & Hex(Err.Number) & " " & Err.Description : WScript.Quit 6
    For Each m In msgs
        Take m
    Next
Loop
If got < count Then WScript.Echo "FAIL got " & got & " of " & count : WScript.Quit 7
WScript.Echo "PULLED " & got
WScript.Quit 0

Sub Take(msg)
    WScript.Echo "MSG " & msg.Topic & " " & msg.Payload & " " & msg.Id & " " & msg.Attempt
    s.Ack msg.Id
    If Err.Number <> 0 Then WScript.Echo "FAIL Ack " & Hex(Err.Number) & " " & Err.Description : WScript.Quit 8
    got = got + 1
End Sub
