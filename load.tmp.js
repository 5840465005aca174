const http=require('http');const agent=new http.Agent({keepAlive:true,maxSockets:16});
const url=process.argv[2];const secs=+process.argv[3]||5;
const get=()=>new Promise((res,rej)=>http.get(url,{agent},r=>{r.resume();r.on('end',res)}).on('error',rej));
(async()=>{let n=0;const end=Date.now()+secs*1000;await Promise.all(Array.from({length:16},async()=>{while(Date.now()<end){await get();n++}}));console.log((n/secs).toFixed(0),'req/s');agent.destroy();})();
