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

Dim createErr
Set b = NewBroker()
If b Is Nothing Then WScript.Echo "FAIL CreateObject " & createErr : WScript.Quit 2
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

' CreateObject("Switchboard.Broker"), or Nothing with createErr saying why.
' Tried again while it meets another relay than the one that will serve it
' (one on its way out, or one launched at the same time): Wine's COM,
' unlike Windows', lets that happen (see com_client.c). For 30 s at most.
Function NewBroker()
    On Error Resume Next
    Dim t0, o
    t0 = Timer
    Do
        Err.Clear
        Set o = Nothing
        Set o = CreateObject("Switchboard.Broker")
        If Err.Number = 0 Then
            Set NewBroker = o
            Exit Function
        End If
        createErr = Hex(Err.Number) & " " & Err.Description
        Select Case Hex(Err.Number)
            Case "80080008", "800706BA", "800706BE", "80010108", "80010007", "80010012", "800706B5", "80004002"
            Case Else
                Exit Do
        End Select
    Loop While Abs(Timer - t0) < 30
    Set NewBroker = Nothing
End Function
