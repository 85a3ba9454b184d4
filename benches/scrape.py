import socket, threading, time, sys
dur=float(sys.argv[1]); n=0; lock=threading.Lock(); lat=[]
def one():
    global n
    end=time.time()+dur
    while time.time()<end:
        t=time.time()
        s=socket.create_connection(("127.0.0.1",19190)); s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        while s.recv(65536): pass
        s.close()
        with lock: n+=1; lat.append(time.time()-t)
        time.sleep(max(0, 1-(time.time()-t)))
ts=[threading.Thread(target=one) for _ in range(100)]
[t.start() for t in ts]; [t.join() for t in ts]
lat.sort(); print(f"scrapes={n} p50={lat[len(lat)//2]*1000:.1f}ms p99={lat[int(len(lat)*.99)]*1000:.1f}ms")
