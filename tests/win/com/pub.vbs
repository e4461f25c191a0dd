' pub.vbs TOPIC PAYLOAD [COUNT]: publishes through Switchboard.Broker as a
' script would, echoing "ID n" for each message (the id comes back only once
' the broker committed it). Then checks that a refusal is a COM error whose
' Err.Description says why. cscript swallows runtime errors and exits 0, so
' every failure is reported with WScript.Quit and a non-zero code.
Option Explicit
On Error Resume Next

Dim topic, payload, count, b, i, id
If WScript.Arguments.Count < 2 Then WScript.Echo "usage: pub.vbs TOPIC PAYLOAD [COUNT]" : WScript.Quit 1
topic = WScript.Arguments(0)
payload = WScript.Arguments(1)
count = 1
If WScript.Arguments.Count > 2 Then count = CLng(WScript.Arguments(2))

Dim createErr
Set b = NewBroker()
If b Is Nothing Then WScript.Echo "FAIL CreateObject " & createErr : WScript.Quit 2

For i = 1 To count
    id = b.Publish(topic, payload, Array("content-type", "text/plain", "sent-by", "pub.vbs"))
    If Err.Number <> 0 Then WScript.Echo "FAIL Publish " & Hex(Err.Number) & " " & Err.Description : WScript.Quit 3
    WScript.Echo "ID " & id
Next

' A topic with a wildcard is refused: the error says so.
b.Publish "orders/#", "x"
If Err.Number = 0 Then WScript.Echo "FAIL a wildcard topic was accepted" : WScript.Quit 4
If InStr(Err.Description, "wildcard") = 0 Then WScript.Echo "FAIL unclear refusal: " & Err.Description : WScript.Quit 5
WScript.Echo "REFUSED " & Hex(Err.Number) & " " & Err.Description
Err.Clear

' A Scripting.Dictionary as headers works too.
Dim h
Set h = CreateObject("Scripting.Dictionary")
h.Add "content-type", "text/plain"
id = b.Publish(topic, payload & " (dictionary)", h)
If Err.Number <> 0 Then WScript.Echo "FAIL Publish with a Dictionary " & Hex(Err.Number) & " " & Err.Description : WScript.Quit 6
WScript.Echo "ID " & id
WScript.Quit 0

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
